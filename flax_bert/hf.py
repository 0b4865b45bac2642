"""Hugging Face interop: read and write BERT checkpoints in the `transformers` layout.

An HF BERT directory holds `config.json`, the weights in `model.safetensors` (or
`pytorch_model.bin`, or a sharded `*.index.json`) and usually `vocab.txt`.

Mapping (HF name -> our param path under `BertForPreTraining`):
    bert.embeddings.X.weight          -> bert/embeddings/X/embedding          [rows, H]
    bert.encoder.layer.i.Y            -> bert/encoder/layers/Y, row i          [L, ...]
    *.dense / query / key / value     -> .../kernel = weight.T [in, out], bias
    *.LayerNorm.weight|gamma, bias|beta -> .../LayerNorm/scale, bias
    cls.predictions.bias              -> cls/predictions/bias                 [V]
    cls.predictions.decoder.weight    -> tied to bert/embeddings/word_embeddings (checked)
    cls.seq_relationship              -> cls/seq_relationship/{kernel [H, 2], bias}

Task heads (`head=`, see hf_names.HEADS) keep the encoder's names and add their own layer at the top
level: `classifier` (sequence and token classification), `qa_outputs` (question answering).
The token and span heads have no `bert.pooler`, as in transformers.

CLI:
    python -m flax_bert.hf import HF_DIR --workdir DIR    # writes DIR/pretrained/
    python -m flax_bert.hf export --workdir DIR OUT_DIR   # writes an HF directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings

import numpy as np

from flax_bert import files, layers, tpu_chips
from flax_bert.config import BertConfig
from flax_bert.errors import UserError
from flax_bert.hf_names import (ALL_GROUPS, DEFAULT_NUM_LABELS, HEADS, IGNORED_SUFFIXES,
                                Params, SAFETENSORS_FILE, TIED_DECODER_BIAS,
                                TIED_DECODER_WEIGHT, get_path, group_of, init_params,
                                name_map, param_shapes, per_layer, read_weights, set_path,
                                stacked)
from flax_bert.trainer import checkpoint
from flax_bert.trainer.run_folder import CONFIG_FILE, Paths, VOCAB_FILE, WorkdirLock

# transformers' BertForSequenceClassification losses that save_pretrained may name.
PROBLEM_TYPES = ("regression", "single_label_classification")


def read_config(hf_dir: str) -> BertConfig:
    """The BertConfig of an HF directory's config.json (UserError if absent or not BERT)."""
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; point to a Hugging Face BERT directory "
                        f"(config.json + model.safetensors)")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or re-save it") from e
    kind = d.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise UserError(f"{path}: position_embedding_type {kind!r} is not supported; "
                        f"only 'absolute' BERT models can be imported")
    try:
        return BertConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}") from e


def read_labels(hf_dir: str) -> list[str]:
    """Label names of an HF directory's config.json, in id order (`id2label`; transformers'
    default LABEL_0, LABEL_1 without one)."""
    with open(os.path.join(hf_dir, CONFIG_FILE), encoding="utf-8") as f:
        id2label = json.load(f).get("id2label") or {}
    if not id2label:
        return [f"LABEL_{i}" for i in range(DEFAULT_NUM_LABELS)]
    return [id2label[k] for k in sorted(id2label, key=int)]


def _normalise(name: str) -> str:
    """Old (TF-converted) checkpoints name LayerNorm params gamma/beta."""
    if ".LayerNorm." in name:
        if name.endswith(".gamma"):
            return name[: -len("gamma")] + "weight"
        if name.endswith(".beta"):
            return name[: -len("beta")] + "bias"
    return name


def load_pretrained(path: str, seed: int = 0, head: str = "pretraining",
                    num_labels: int | None = None) -> tuple[BertConfig, Params]:
    """Reads a local HF BERT directory into (config, params of the model of `head`).

    Accepts checkpoints of any head in HEADS (`bert.` prefix) and bare `BertModel` ones (no
    prefix). Task layers (and the pooler) absent from the file are initialised from `seed`
    and listed in a warning; another head's layers are dropped, with a warning.
    `num_labels` (labelled heads) defaults to config.json's. Params are float32 NumPy arrays.
    """
    config = read_config(path)
    if num_labels is None:
        num_labels = len(read_labels(path))
    raw, weight_file = read_weights(path)
    prefixed = any(k.startswith("bert.") for k in raw)
    tensors: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        name = _normalise(name)
        if not prefixed and group_of(name) is None:
            name = "bert." + name  # Bare BertModel checkpoint.
        tensors[name] = np.asarray(value, np.float32)

    decoder_bias = tensors.pop(TIED_DECODER_BIAS, None)
    if decoder_bias is not None:
        bias = tensors.setdefault("cls.predictions.bias", decoder_bias)
        if not np.array_equal(bias, decoder_bias):
            raise UserError(f"{weight_file}: {TIED_DECODER_BIAS} differs from "
                            f"cls.predictions.bias; they must be the same tensor")
    decoder_weight = tensors.pop(TIED_DECODER_WEIGHT, None)

    mapping = name_map(config, head)
    known = {hf for hf, _, _ in mapping}
    other_heads = sorted(hf for hf in set(tensors) - known if group_of(hf) is not None)
    unexpected = sorted(set(tensors) - known - set(other_heads))
    if unexpected:
        raise UserError(f"{weight_file}: unexpected tensor {unexpected[0]!r} "
                        f"({len(unexpected)} in all); only BERT encoder, pooler and "
                        f"task-head tensors ({', '.join(ALL_GROUPS)}) can be imported")
    if other_heads:
        warnings.warn(f"{weight_file}: not used by {HEADS[head].architecture}: "
                      f"{', '.join(sorted({group_of(hf) for hf in other_heads}))}", stacklevel=2)
    present_groups = {group_of(hf) for hf in tensors}
    shapes = param_shapes(config, head, num_labels)
    params: Params = {}
    fresh: list[str] = []
    for hf, ours, is_kernel in mapping:
        group = group_of(hf)
        if hf not in tensors:
            if group in HEADS[head].optional_groups and group not in present_groups:
                fresh.append(hf)
                continue
            raise UserError(f"{weight_file}: tensor {hf!r} is missing; the checkpoint is "
                            f"incomplete or does not match {CONFIG_FILE}")
        value = tensors[hf].T if is_kernel else tensors[hf]
        expected = get_path(shapes, ours)
        if value.shape != expected:
            want = expected[::-1] if is_kernel else expected
            raise UserError(f"{weight_file}: tensor {hf!r} has shape {tensors[hf].shape}, "
                            f"expected {want} from {CONFIG_FILE}; fix config.json or the weights")
        set_path(params, ours, np.ascontiguousarray(value))

    if fresh:
        init = init_params(config, seed, head, num_labels)
        for hf, ours, _ in mapping:
            if hf in fresh:
                set_path(params, ours, get_path(init, ours))
        groups = sorted({group_of(hf) for hf in fresh})
        warnings.warn(f"{weight_file}: no weights for {', '.join(groups)}; freshly "
                      f"initialised: {', '.join(fresh)}", stacklevel=2)

    if decoder_weight is not None and head == "pretraining":
        word = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
        if decoder_weight.shape != word.shape or not np.array_equal(decoder_weight, word):
            raise UserError(f"{weight_file}: {TIED_DECODER_WEIGHT} differs from the word "
                            f"embeddings; only tied MLM decoders are supported")
    return config, stacked(params)


# ----------------------------------------------------------------------------- writing

def num_labels_of(params: Params, head: str) -> int:
    """The number of labels a labelled head's params were built for (its classifier's
    outputs); DEFAULT_NUM_LABELS for the others."""
    if not HEADS[head].labelled:
        return DEFAULT_NUM_LABELS
    try:
        return int(np.shape(get_path(params, ("classifier", "bias")))[0])
    except (KeyError, TypeError) as e:
        raise UserError(f"params: classifier/bias is missing; pass the params of "
                        f"{HEADS[head].architecture}") from e


def to_state_dict(config: BertConfig, params: Params,
                  head: str = "pretraining") -> dict[str, np.ndarray]:
    """Our params -> the state dict of transformers' class for `head` (float32, contiguous).

    The tied decoder (`cls.predictions.decoder.*`) is left out, as transformers 5.x saves it.
    """
    import flax.linen as nn

    params = nn.unbox(params)
    shapes = param_shapes(config, head, num_labels_of(params, head))
    try:
        params = per_layer(params)
    except (KeyError, TypeError) as e:
        raise UserError(f"params: bert/encoder/{layers.LAYERS} is missing; pass the params "
                        f"of {HEADS[head].architecture} for this config") from e
    out: dict[str, np.ndarray] = {}
    for hf, ours, is_kernel in name_map(config, head):
        try:
            value = np.asarray(get_path(params, ours), np.float32)
        except (KeyError, TypeError) as e:
            raise UserError(f"params: {'/'.join(ours)} is missing; pass the params of "
                            f"{HEADS[head].architecture} for this config") from e
        expected = get_path(shapes, ours)
        if value.shape != expected:
            raise UserError(f"params: {'/'.join(ours)} has shape {value.shape}, expected "
                            f"{expected} from the config; pass matching config and params")
        out[hf] = np.ascontiguousarray(value.T if is_kernel else value)
    return out


def save_pretrained(config: BertConfig, params: Params, path: str,
                    vocab: str | None = None, head: str = "pretraining",
                    labels: list[str] | None = None, problem_type: str | None = None) -> None:
    """Writes an HF directory (config.json, model.safetensors[, vocab.txt]) at `path`.

    transformers' class of `head` (`BertForPreTraining`, ...) `.from_pretrained(path)` loads
    it with no missing or unexpected keys; `vocab` is the path of a vocab.txt to copy
    alongside; `labels` (labelled heads) name the classes in id order, written as
    id2label / label2id (default LABEL_0, LABEL_1, ...); `problem_type` (sequence
    classification) is transformers' loss choice: "regression" (one output, MSE; e.g.
    STS-B) or "single_label_classification".
    """
    from safetensors.numpy import save_file

    if vocab is not None and not os.path.isfile(vocab):
        raise UserError(f"{vocab} not found; pass the path of the model's vocab.txt")
    tensors = to_state_dict(config, params, head)
    hf_config = {**config.to_dict(), "architectures": [HEADS[head].architecture],
                 "model_type": "bert", "position_embedding_type": "absolute",
                 "tie_word_embeddings": True}
    if HEADS[head].labelled:
        num_labels = num_labels_of(params, head)
        labels = labels or [f"LABEL_{i}" for i in range(num_labels)]
        if len(labels) != num_labels:
            raise UserError(f"{len(labels)} label names for a classifier of {num_labels} "
                            f"outputs; pass one name per class")
        hf_config["id2label"] = {str(i): name for i, name in enumerate(labels)}
        hf_config["label2id"] = {name: i for i, name in enumerate(labels)}
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES or head != "sequence_classification":
            raise UserError(f"problem_type {problem_type!r}: sequence classification takes "
                            f"{' or '.join(PROBLEM_TYPES)}")
        hf_config["problem_type"] = problem_type
    os.makedirs(path, exist_ok=True)
    files.write_text(os.path.join(path, CONFIG_FILE),
                     json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, os.path.join(path, SAFETENSORS_FILE), metadata={"format": "pt"})
    if vocab is not None:
        shutil.copyfile(vocab, os.path.join(path, VOCAB_FILE))


# ----------------------------------------------------------------------------- CLI

def import_to_workdir(hf_dir: str, workdir: str) -> str:
    """Imports an HF directory into `workdir/pretrained` (an export dir); returns its path."""
    paths = Paths(workdir)
    target = paths.pretrained
    if os.path.exists(target):
        raise UserError(f"{target} already exists; remove it or choose another --workdir")
    if os.path.exists(paths.checkpoints):
        raise UserError(f"{paths.checkpoints} exists: the workdir already has training "
                        f"checkpoints; choose a fresh --workdir")
    config, params = load_pretrained(hf_dir)
    checkpoint.save_params(target, config, params)
    vocab = os.path.join(hf_dir, VOCAB_FILE)
    if os.path.isfile(vocab):
        shutil.copyfile(vocab, os.path.join(target, VOCAB_FILE))
    return target


def own_vocab(path: str) -> str | None:
    """The vocab.txt a run folder (its own, or its imported model's), an export or a Hugging
    Face folder was trained with, if it has one."""
    found = [p for p in (os.path.join(path, VOCAB_FILE),
                         os.path.join(Paths(path).pretrained, VOCAB_FILE)) if os.path.isfile(p)]
    return found[0] if found else None


def export_from_workdir(workdir: str, out_dir: str, vocab: str | None = None) -> None:
    """Writes the model of `workdir` (via flax_bert.trainer.checkpoint) as an HF directory."""
    if os.path.exists(os.path.join(out_dir, SAFETENSORS_FILE)):
        raise UserError(f"{os.path.join(out_dir, SAFETENSORS_FILE)} already exists; "
                        f"choose an empty OUT_DIR")
    try:
        config = checkpoint.load_config(workdir)
        params = checkpoint.load_params(workdir)
    except FileNotFoundError as e:
        raise UserError(f"{workdir}: no model found ({e.filename or e}); pass a workdir "
                        f"with a checkpoint or an export directory") from e
    save_pretrained(config, params, out_dir, vocab=vocab or own_vocab(workdir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flax_bert.hf",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_import = sub.add_parser("import", help="HF directory -> WORKDIR/pretrained")
    p_import.add_argument("hf_dir", metavar="HF_DIR")
    p_import.add_argument("--workdir", required=True)
    p_export = sub.add_parser("export", help="model of WORKDIR -> HF directory")
    p_export.add_argument("--workdir", required=True)
    p_export.add_argument("out_dir", metavar="OUT_DIR")
    p_export.add_argument("--vocab", default=None,
                          help="vocab.txt to copy (default: the workdir's)")
    args = parser.parse_args(argv)
    tpu_chips.quiet_libtpu()  # libtpu installed, no TPU attached: no start-up noise
    try:
        if args.command == "import":
            read_config(args.hf_dir)  # a bad source fails before the workdir is made
            os.makedirs(args.workdir, exist_ok=True)
            with WorkdirLock(args.workdir):  # no import into a workdir a run writes into
                target = import_to_workdir(args.hf_dir, args.workdir)
            print(f"imported {args.hf_dir} -> {target}")
        else:
            export_from_workdir(args.workdir, args.out_dir, args.vocab)
            print(f"exported {args.workdir} -> {args.out_dir}")
    except (UserError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # Always one line.
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
