"""Where a fine-tuned model starts (config.init): a checkpoint's encoder, its architecture
from random weights, or a new model; and the checks that a fine-tune run folder continues
one run. Shared by every fine-tuning job (classification, GLUE, SQuAD)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from flax_bert import files, hf, hf_names
from flax_bert.config import BertConfig
from flax_bert.data import vocab as vocab_lib
from flax_bert.errors import UserError
from flax_bert.trainer import checkpoint, checks
from flax_bert.trainer.run_folder import Paths, install_vocab, same_file


@dataclasses.dataclass(frozen=True)
class Start:
    """What the model starts from: its architecture, vocab and (unless random) encoder."""

    config: BertConfig
    vocab: str  # path of the vocab.txt
    encoder: Any | None  # the `bert` params, or None: random init
    description: str


def _is_hf_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name + suffix))
               for name in (hf_names.SAFETENSORS_FILE, hf_names.TORCH_FILE)
               for suffix in ("", ".index.json"))


def resolve_start(config: ml_collections.ConfigDict, head: str) -> Start:
    """The model's start from config.init: a checkpoint's weights, its architecture from
    random weights, or a new model of config.model. A vocab that is not the checkpoint's
    (other size, other tokens) is a UserError. `head`: the job's hf_names.HEADS entry (an HF
    checkpoint of any head is read; only its encoder is kept)."""
    init = config.init
    if not init.checkpoint:
        if not init.vocab:
            raise UserError("config.init.checkpoint is '' (a new model) but config.init.vocab "
                            "is ''; pass the vocab.txt to tokenize with")
        size = len(vocab_lib.read_vocab(init.vocab))
        return Start(checks.model_config(config.model, size, config.data.max_seq_length),
                     init.vocab, None, f"random weights, config.model, {init.vocab}")
    path = os.path.abspath(init.checkpoint)
    if not os.path.isdir(path):
        raise UserError(f"config.init.checkpoint {path}: no such directory; pass a pretraining "
                        f"workdir, an export or a Hugging Face directory, or '' for a new model")
    is_hf = _is_hf_dir(path)
    try:
        model_config = hf.read_config(path) if is_hf else checkpoint.load_config(path)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"config.init.checkpoint {path}: no readable config.json ({e}); pass a "
                        f"pretraining workdir, an export or a Hugging Face directory") from e
    own = hf.own_vocab(path)
    vocab = init.vocab or own
    if vocab is None:
        raise UserError(f"{path} has no vocab.txt; pass the vocab it was trained with "
                        f"(config.init.vocab)")
    size = len(vocab_lib.read_vocab(vocab))
    if size != model_config.vocab_size:
        raise UserError(f"{vocab} has {size} tokens but {path} was trained with vocab_size "
                        f"{model_config.vocab_size}: a checkpoint of another vocab; pass its "
                        f"own vocab.txt (config.init.vocab)")
    if own and init.vocab and not same_file(own, init.vocab):
        raise UserError(f"config.init.vocab {init.vocab} differs from {own}, the vocab "
                        f"{path} was trained with; use that one (config.init.vocab='')")
    if init.from_scratch:
        return Start(model_config, vocab, None, f"random weights, the architecture of {path}")
    if is_hf:
        # Its own task layer (any label count) is read and dropped: only `bert` is used.
        _, params = hf.load_pretrained(path, config.seed, head=head)
    else:
        try:
            params = checkpoint.load_params(path)
        except FileNotFoundError as e:
            raise UserError(f"config.init.checkpoint {path}: no checkpoint found ({e}); pass a "
                            f"workdir that has trained") from e
    encoder = dict(params["bert"])
    if not hf_names.HEADS[head].pooler:  # the token and span heads have none
        encoder.pop("pooler", None)
    return Start(model_config, vocab, encoder, f"the weights of {path}")


def check_run_folder(workdir: str, start: Start, labels: list[str]) -> None:
    """A fine-tune run folder continues one run: same start, vocab file, labels,
    architecture."""
    paths = Paths(workdir)
    if os.path.isfile(paths.vocab) and not same_file(paths.vocab, start.vocab):
        raise UserError(f"{paths.vocab} differs from {start.vocab}: the workdir holds a model "
                        f"of another vocab; use a new --workdir")
    if os.path.isfile(paths.finetune_run):
        with open(paths.finetune_run, encoding="utf-8") as f:
            old = json.load(f)
        if old["labels"] != labels:
            raise UserError(f"{paths.finetune_run} has labels {old['labels']} but the train "
                            f"data has {labels}; use the same data or a new --workdir")
        if old["start"] != start.description:
            raise UserError(f"{paths.finetune_run}: this workdir's model started from "
                            f"{old['start']}, this run asks for {start.description}; use a "
                            f"new --workdir")
    checks.check_same_model(workdir, start.config)


def fine_tuned_config(start: Start, config: ml_collections.ConfigDict) -> BertConfig:
    """The start's architecture with config.train.dropout as its hidden and attention
    dropout; config.data.max_seq_length must fit its position embeddings."""
    model_config = dataclasses.replace(start.config, hidden_dropout_prob=config.train.dropout,
                                       attention_probs_dropout_prob=config.train.dropout)
    checks.check_positions(model_config, config.data.max_seq_length)
    return model_config


def export_dir(config: ml_collections.ConfigDict, paths: Paths) -> str:
    """Where the transformers export goes: config.export_dir, or WORKDIR/hf when ''. A
    given folder that holds a model already is refused (the run would overwrite it)."""
    if (config.export_dir and os.path.exists(os.path.join(config.export_dir,
                                                          hf.SAFETENSORS_FILE))
            and not os.path.isdir(paths.checkpoints)):  # a started run's export is its own
        raise UserError(f"{config.export_dir} already holds a model.safetensors; choose "
                        f"another config.export_dir")
    return config.export_dir or paths.export


def write_run_files(paths: Paths, start: Start, model_config: BertConfig,
                    labels: list[str]) -> None:
    """The model (config.json), its vocab.txt, and finetune.json: the class names in id
    order and where the model started."""
    model_config.to_json_file(paths.config)
    files.write_json(paths.finetune_run, {"labels": labels, "start": start.description})
    install_vocab(start.vocab, paths)
