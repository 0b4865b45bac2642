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

Task heads (`head=`, see HEADS) keep the encoder's names and add their own layer at the top
level: `classifier` (sequence and token classification), `qa_outputs` (question answering).
The token and span heads have no `bert.pooler`, as in transformers.

CLI:
    python -m flax_bert.hf import HF_DIR --workdir DIR    # writes DIR/pretrained/
    python -m flax_bert.hf export --workdir DIR OUT_DIR   # writes an HF directory
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import warnings
from typing import Any, Iterator

import numpy as np

from flax_bert import checkpoint
from flax_bert import model as model_lib
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.errors import UserError
from flax_bert.workdir import CONFIG_FILE, VOCAB_FILE, Paths, WorkdirLock

SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"

Params = dict[str, Any]
Path = tuple[str, ...]

POOLER_GROUP = "bert.pooler"


@dataclasses.dataclass(frozen=True)
class Head:
    """A transformers BERT class: our model for it and the HF names of its task layers.

    Loading, a checkpoint without any tensor of an optional group (the pooler, a task
    layer: a bare `BertModel`, a `BertForMaskedLM`) gets that group freshly initialised,
    with a warning; tensors of another head's groups are dropped, with a warning.
    """

    architecture: str  # transformers class name, also our flax_bert.model class name
    pooler: bool  # whether its encoder has `bert.pooler`
    groups: tuple[str, ...]  # HF name prefixes of its task layers
    labelled: bool  # whether it takes num_labels (its `classifier` has one output per label)

    @property
    def optional_groups(self) -> tuple[str, ...]:
        return ((POOLER_GROUP,) if self.pooler else ()) + self.groups


HEADS = {
    "pretraining": Head("BertForPreTraining", True,
                        ("cls.predictions", "cls.seq_relationship"), False),
    "sequence_classification": Head("BertForSequenceClassification", True, ("classifier",), True),
    "token_classification": Head("BertForTokenClassification", False, ("classifier",), True),
    "question_answering": Head("BertForQuestionAnswering", False, ("qa_outputs",), False),
}
_ALL_GROUPS = tuple(sorted({g for h in HEADS.values() for g in h.optional_groups}))
DEFAULT_NUM_LABELS = 2  # transformers' PretrainedConfig default
# Buffers and aliases that carry no parameter of their own.
_IGNORED_SUFFIXES = ("position_ids", "embeddings.token_type_ids")
_TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_TIED_DECODER_BIAS = "cls.predictions.decoder.bias"


# ----------------------------------------------------------------------------- name mapping

def _linear(hf: str, path: Path) -> Iterator[tuple[str, Path, bool]]:
    yield f"{hf}.weight", path + ("kernel",), True
    yield f"{hf}.bias", path + ("bias",), False


def _layer_norm(hf: str, path: Path) -> Iterator[tuple[str, Path, bool]]:
    yield f"{hf}.weight", path + ("scale",), False
    yield f"{hf}.bias", path + ("bias",), False


def name_map(config: BertConfig, head: str = "pretraining") -> list[tuple[str, Path, bool]]:
    """Every (HF name, our param path, is_dense_kernel) of the model of `head` (HEADS).

    HF names are those of the transformers class (with the `bert.` prefix); dense kernels
    are stored transposed: torch's weight is [out, in], our kernel [in, out]. Encoder
    layers are named per layer, `bert/encoder/layer_i/...`: the layout `per_layer` gives
    our stacked params.
    """
    out: list[tuple[str, Path, bool]] = []
    emb = ("bert", "embeddings")
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out.append((f"bert.embeddings.{name}.weight", emb + (name, "embedding"), False))
    out += _layer_norm("bert.embeddings.LayerNorm", emb + ("LayerNorm",))
    for i in range(config.num_hidden_layers):
        hf, ours = f"bert.encoder.layer.{i}", ("bert", "encoder", f"layer_{i}")
        for name in ("query", "key", "value"):
            out += _linear(f"{hf}.attention.self.{name}", ours + ("attention", "self", name))
        out += _linear(f"{hf}.attention.output.dense", ours + ("attention", "output", "dense"))
        out += _layer_norm(f"{hf}.attention.output.LayerNorm",
                           ours + ("attention", "output", "LayerNorm"))
        out += _linear(f"{hf}.intermediate.dense", ours + ("intermediate", "dense"))
        out += _linear(f"{hf}.output.dense", ours + ("output", "dense"))
        out += _layer_norm(f"{hf}.output.LayerNorm", ours + ("output", "LayerNorm"))
    if HEADS[head].pooler:
        out += _linear(f"{POOLER_GROUP}.dense", ("bert", "pooler", "dense"))
    if head != "pretraining":  # one dense task layer, named as its group
        (layer,) = HEADS[head].groups
        return out + list(_linear(layer, (layer,)))
    out.append(("cls.predictions.bias", ("cls", "predictions", "bias"), False))
    out += _linear("cls.predictions.transform.dense", ("cls", "predictions", "transform", "dense"))
    out += _layer_norm("cls.predictions.transform.LayerNorm",
                       ("cls", "predictions", "transform", "LayerNorm"))
    out += _linear("cls.seq_relationship", ("cls", "seq_relationship"))
    return out


def _group(hf_name: str) -> str | None:
    """The optional group (of any head) an HF name belongs to, or None for an encoder
    tensor."""
    return next((g for g in _ALL_GROUPS if hf_name.startswith(g + ".")), None)


def _get(tree: Params, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: Params, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def per_layer(params: Params) -> Params:
    """Params with the encoder's stacked layers split into `layer_i` (see name_map)."""
    encoder = model_lib.unstack_layers(params["bert"]["encoder"])
    return params | {"bert": params["bert"] | {"encoder": encoder}}


def _stacked(params: Params) -> Params:
    """The inverse of `per_layer`: our model's layout."""
    encoder = model_lib.stack_layers(params["bert"]["encoder"])
    return params | {"bert": params["bert"] | {"encoder": encoder}}


def make_model(config: BertConfig, head: str = "pretraining",
               num_labels: int = DEFAULT_NUM_LABELS, compute: Compute = Compute()) -> Any:
    """Our Linen model of `head` (HEADS), computing as `compute` says."""
    if head not in HEADS:
        raise UserError(f"head {head!r} is unknown; use one of {', '.join(HEADS)}")
    cls = getattr(model_lib, HEADS[head].architecture)
    if HEADS[head].labelled:
        return cls(config, compute, num_labels=num_labels)
    return cls(config, compute)


def _init(config: BertConfig, head: str, num_labels: int, seed: int) -> Any:
    import jax
    import jax.numpy as jnp

    ids = jnp.zeros((1, 1), jnp.int32)
    return make_model(config, head, num_labels).init(jax.random.PRNGKey(seed), ids, ids,
                                                     ids)["params"]


def _param_shapes(config: BertConfig, head: str = "pretraining",
                  num_labels: int = DEFAULT_NUM_LABELS) -> Params:
    """Our param tree's shapes for `config`, per layer (name_map's layout), without
    allocating anything."""
    import flax.linen as nn
    import jax

    shapes = jax.eval_shape(lambda: per_layer(nn.unbox(_init(config, head, num_labels, 0))))
    return jax.tree.map(lambda s: tuple(s.shape), shapes)


def _init_params(config: BertConfig, seed: int, head: str = "pretraining",
                 num_labels: int = DEFAULT_NUM_LABELS) -> Params:
    """Freshly initialised params of the model of `head`, as host float32 arrays, per layer
    (name_map's layout)."""
    import flax.linen as nn
    import jax

    params = per_layer(nn.unbox(_init(config, head, num_labels, seed)))
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


# ----------------------------------------------------------------------------- reading

def _read_bf16(path: str, names: list[str]) -> dict[str, np.ndarray]:
    """bfloat16 tensors of a safetensors file as float32 (NumPy has no bfloat16).

    File layout: u64 little-endian header size, JSON header {name: {dtype, shape,
    data_offsets}}, then the data; bf16 is the upper half of a float32's bits.
    """
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        data = f.read()
    out = {}
    for name in names:
        info = header[name]
        start, end = info["data_offsets"]
        bits = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint32) << 16
        out[name] = bits.view(np.float32).reshape(info["shape"])
    return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    bf16: list[str] = []
    try:
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                try:
                    tensors[name] = f.get_tensor(name)
                except TypeError:  # "data type 'bfloat16' not understood".
                    bf16.append(name)
        tensors.update(_read_bf16(path, bf16))
    except Exception as e:  # safetensors raises its own error types for corrupt files.
        raise UserError(f"{path}: cannot read safetensors file ({e}); "
                        f"re-save the checkpoint") from e
    return tensors


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{path} needs PyTorch to read; pip install torch, or convert the "
                        f"checkpoint to {SAFETENSORS_FILE}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # Pickle/zip errors of a truncated or foreign file.
        raise UserError(f"{path}: cannot read PyTorch checkpoint ({e}); "
                        f"re-save the checkpoint") from e
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def _read_weights(hf_dir: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of an HF directory and the file they came from (for error messages)."""
    for single, reader in ((SAFETENSORS_FILE, _read_safetensors), (TORCH_FILE, _read_torch)):
        path = os.path.join(hf_dir, single)
        if os.path.isfile(path):
            return reader(path), path
        index = path + ".index.json"  # Sharded checkpoint: {"weight_map": {name: shard}}.
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(reader(os.path.join(hf_dir, shard)))
            return tensors, index
    raise UserError(f"{hf_dir}: no {SAFETENSORS_FILE} or {TORCH_FILE} found; "
                    f"point to a Hugging Face BERT directory")


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
    raw, weight_file = _read_weights(path)
    prefixed = any(k.startswith("bert.") for k in raw)
    tensors: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        name = _normalise(name)
        if not prefixed and _group(name) is None:
            name = "bert." + name  # Bare BertModel checkpoint.
        tensors[name] = np.asarray(value, np.float32)

    decoder_bias = tensors.pop(_TIED_DECODER_BIAS, None)
    if decoder_bias is not None:
        bias = tensors.setdefault("cls.predictions.bias", decoder_bias)
        if not np.array_equal(bias, decoder_bias):
            raise UserError(f"{weight_file}: {_TIED_DECODER_BIAS} differs from "
                            f"cls.predictions.bias; they must be the same tensor")
    decoder_weight = tensors.pop(_TIED_DECODER_WEIGHT, None)

    mapping = name_map(config, head)
    known = {hf for hf, _, _ in mapping}
    other_heads = sorted(hf for hf in set(tensors) - known if _group(hf) is not None)
    unexpected = sorted(set(tensors) - known - set(other_heads))
    if unexpected:
        raise UserError(f"{weight_file}: unexpected tensor {unexpected[0]!r} "
                        f"({len(unexpected)} in all); only BERT encoder, pooler and "
                        f"task-head tensors ({', '.join(_ALL_GROUPS)}) can be imported")
    if other_heads:
        warnings.warn(f"{weight_file}: not used by {HEADS[head].architecture}: "
                      f"{', '.join(sorted({_group(hf) for hf in other_heads}))}", stacklevel=2)
    present_groups = {_group(hf) for hf in tensors}
    shapes = _param_shapes(config, head, num_labels)
    params: Params = {}
    fresh: list[str] = []
    for hf, ours, is_kernel in mapping:
        group = _group(hf)
        if hf not in tensors:
            if group in HEADS[head].optional_groups and group not in present_groups:
                fresh.append(hf)
                continue
            raise UserError(f"{weight_file}: tensor {hf!r} is missing; the checkpoint is "
                            f"incomplete or does not match {CONFIG_FILE}")
        value = tensors[hf].T if is_kernel else tensors[hf]
        expected = _get(shapes, ours)
        if value.shape != expected:
            want = expected[::-1] if is_kernel else expected
            raise UserError(f"{weight_file}: tensor {hf!r} has shape {tensors[hf].shape}, "
                            f"expected {want} from {CONFIG_FILE}; fix config.json or the weights")
        _set(params, ours, np.ascontiguousarray(value))

    if fresh:
        init = _init_params(config, seed, head, num_labels)
        for hf, ours, _ in mapping:
            if hf in fresh:
                _set(params, ours, _get(init, ours))
        groups = sorted({_group(hf) for hf in fresh})
        warnings.warn(f"{weight_file}: no weights for {', '.join(groups)}; freshly "
                      f"initialised: {', '.join(fresh)}", stacklevel=2)

    if decoder_weight is not None and head == "pretraining":
        word = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
        if decoder_weight.shape != word.shape or not np.array_equal(decoder_weight, word):
            raise UserError(f"{weight_file}: {_TIED_DECODER_WEIGHT} differs from the word "
                            f"embeddings; only tied MLM decoders are supported")
    return config, _stacked(params)


# ----------------------------------------------------------------------------- writing

def num_labels_of(params: Params, head: str) -> int:
    """The number of labels a labelled head's params were built for (its classifier's
    outputs); DEFAULT_NUM_LABELS for the others."""
    if not HEADS[head].labelled:
        return DEFAULT_NUM_LABELS
    try:
        return int(np.shape(_get(params, ("classifier", "bias")))[0])
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
    shapes = _param_shapes(config, head, num_labels_of(params, head))
    try:
        params = per_layer(params)
    except (KeyError, TypeError) as e:
        raise UserError(f"params: bert/encoder/{model_lib.LAYERS} is missing; pass the params "
                        f"of {HEADS[head].architecture} for this config") from e
    out: dict[str, np.ndarray] = {}
    for hf, ours, is_kernel in name_map(config, head):
        try:
            value = np.asarray(_get(params, ours), np.float32)
        except (KeyError, TypeError) as e:
            raise UserError(f"params: {'/'.join(ours)} is missing; pass the params of "
                            f"{HEADS[head].architecture} for this config") from e
        expected = _get(shapes, ours)
        if value.shape != expected:
            raise UserError(f"params: {'/'.join(ours)} has shape {value.shape}, expected "
                            f"{expected} from the config; pass matching config and params")
        out[hf] = np.ascontiguousarray(value.T if is_kernel else value)
    return out


def save_pretrained(config: BertConfig, params: Params, path: str,
                    vocab: str | None = None, head: str = "pretraining",
                    labels: list[str] | None = None) -> None:
    """Writes an HF directory (config.json, model.safetensors[, vocab.txt]) at `path`.

    transformers' class of `head` (`BertForPreTraining`, ...) `.from_pretrained(path)` loads
    it with no missing or unexpected keys; `vocab` is the path of a vocab.txt to copy
    alongside; `labels` (labelled heads) name the classes in id order, written as
    id2label / label2id (default LABEL_0, LABEL_1, ...).
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
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
        f.write("\n")
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
    """Writes the model of `workdir` (via flax_bert.checkpoint) as an HF directory."""
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
