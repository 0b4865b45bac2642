"""The fine-tuning loop: labelled text -> sharded train steps -> eval accuracy and macro-F1
-> a transformers BertForSequenceClassification directory.

A fine-tune workdir holds what a pretraining one does (config.json, vocab.txt,
checkpoints/, metrics.jsonl, tensorboard/, loss.png, accuracy.png) plus finetune.json (the
class names in id order and where the model started), books/ (the book task, when built) and hf/ (the export).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from flax_bert import checkpoint, hf
from flax_bert.config import BertConfig
from flax_bert.data import vocab as vocab_lib
from flax_bert.errors import UserError
from flax_bert.finetune import books, data, steps as ft_steps
from flax_bert.training import metrics as metrics_lib
from flax_bert.training import optimizer, sharding, state as state_lib, steps
from flax_bert.training.loop import (DeviceFeed, Evaluations, TrainMeter, call_sizes,
                                     check_same_model, encoder_options, final_eval_and_save,
                                     global_batch, model_config_from, resume, run_locked, say,
                                     train_calls)

HEAD = "sequence_classification"
RUN_FILE = "finetune.json"  # {"labels": [...], "start": Start.description}
BOOKS_DIR = "books"
EXPORT_DIR = "hf"
PLOTS = ((metrics_lib.LOSS_PLOT, ("loss",), "loss"),
         (metrics_lib.ACCURACY_PLOT, ("accuracy", "macro_f1"), "accuracy"))


@dataclasses.dataclass(frozen=True)
class Start:
    """What the model starts from: its architecture, vocab and (unless random) encoder."""

    config: BertConfig
    vocab: str  # path of the vocab.txt
    encoder: Any | None  # the `bert` params, or None: random init
    description: str


def _is_hf_dir(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name + suffix))
               for name in (hf.SAFETENSORS_FILE, hf.TORCH_FILE) for suffix in ("", ".index.json"))


def _own_vocab(path: str) -> str | None:
    """The vocab.txt a workdir, export or HF directory was trained with, if it has one."""
    found = [p for p in (os.path.join(path, checkpoint.VOCAB_FILE),
                         os.path.join(path, checkpoint.PRETRAINED_DIR, checkpoint.VOCAB_FILE))
             if os.path.isfile(p)]
    return found[0] if found else None


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def resolve_start(config: ml_collections.ConfigDict) -> Start:
    """The model's start from config.init: a checkpoint's weights, its architecture from
    random weights, or a new model of config.model. A vocab that is not the checkpoint's
    (other size, other tokens) is a UserError."""
    init = config.init
    if not init.checkpoint:
        if not init.vocab:
            raise UserError("config.init.checkpoint is '' (a new model) but config.init.vocab "
                            "is ''; pass the vocab.txt to tokenize with")
        size = len(vocab_lib.read_vocab(init.vocab))
        return Start(model_config_from(config, size), init.vocab, None,
                     f"random weights, config.model, {init.vocab}")
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
    own = _own_vocab(path)
    vocab = init.vocab or own
    if vocab is None:
        raise UserError(f"{path} has no vocab.txt; pass the vocab it was trained with "
                        f"(config.init.vocab)")
    size = len(vocab_lib.read_vocab(vocab))
    if size != model_config.vocab_size:
        raise UserError(f"{vocab} has {size} tokens but {path} was trained with vocab_size "
                        f"{model_config.vocab_size}: a checkpoint of another vocab; pass its "
                        f"own vocab.txt (config.init.vocab)")
    if own and init.vocab and not _same_file(own, init.vocab):
        raise UserError(f"config.init.vocab {init.vocab} differs from {own}, the vocab "
                        f"{path} was trained with; use that one (config.init.vocab='')")
    if init.from_scratch:
        return Start(model_config, vocab, None, f"random weights, the architecture of {path}")
    if is_hf:
        # Its own task layer (any label count) is read and dropped: only `bert` is used.
        _, params = hf.load_pretrained(path, config.seed, head=HEAD)
    else:
        try:
            params = checkpoint.load_params(path)
        except FileNotFoundError as e:
            raise UserError(f"config.init.checkpoint {path}: no checkpoint found ({e}); pass a "
                            f"workdir that has trained") from e
    return Start(model_config, vocab, params["bert"], f"the weights of {path}")


def _check_workdir_matches(workdir: str, start: Start, labels: list[str]) -> None:
    """A fine-tune workdir continues one run: same start, vocab file, labels, architecture."""
    saved_vocab = os.path.join(workdir, checkpoint.VOCAB_FILE)
    if os.path.isfile(saved_vocab) and not _same_file(saved_vocab, start.vocab):
        raise UserError(f"{saved_vocab} differs from {start.vocab}: the workdir holds a model "
                        f"of another vocab; use a new --workdir")
    saved = os.path.join(workdir, RUN_FILE)
    if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
            old = json.load(f)
        if old["labels"] != labels:
            raise UserError(f"{saved} has labels {old['labels']} but the train data has "
                            f"{labels}; use the same data or a new --workdir")
        if old["start"] != start.description:
            raise UserError(f"{saved}: this workdir's model started from {old['start']}, this "
                            f"run asks for {start.description}; use a new --workdir")
    check_same_model(workdir, start.config)


def _data_paths(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """(train, eval) files; the book task is built into WORKDIR/books when both are ''."""
    d = config.data
    if bool(d.train) != bool(d.eval):
        raise UserError("set both config.data.train and config.data.eval (a held-out file), "
                        "or neither (the book task)")
    if d.train:
        return d.train, d.eval
    out = os.path.join(workdir, BOOKS_DIR)
    if jax.process_index() == 0:
        counts = books.build(config.books, out)
        say(f"book task in {out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("book task built")
    return os.path.join(out, books.TRAIN_FILE), os.path.join(out, books.TEST_FILE)


def evaluate(eval_step: Any, params: Any, arrays: dict[str, np.ndarray], batch_size: int,
             mesh: Any) -> dict[str, float]:
    """Accuracy, macro-F1 and loss over all of `arrays` (the eval set)."""
    predictions, loss_sum = [], 0.0
    for local in data.eval_batches(arrays, batch_size, jax.process_index(),
                                   jax.process_count()):
        out = jax.device_get(eval_step(params, global_batch(local, mesh)))
        predictions.append(out["prediction"])
        loss_sum += float(np.sum(out["loss"]))
    n = len(arrays["label"])
    return ft_steps.classification_metrics(arrays["label"], np.concatenate(predictions)[:n],
                                           loss_sum)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) fine-tuning in `workdir`; returns the final eval metrics."""
    return run_locked(_train_and_evaluate, config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    writer_process = jax.process_index() == 0
    t = config.train
    export_dir = config.export_dir or os.path.join(workdir, EXPORT_DIR)
    if config.export_dir and os.path.exists(os.path.join(export_dir, hf.SAFETENSORS_FILE)):
        raise UserError(f"{export_dir} already holds a model.safetensors; choose another "
                        f"config.export_dir")
    if t.steps_per_call < 1:
        raise UserError(f"config.train.steps_per_call ({t.steps_per_call}) must be >= 1")

    columns = data.Columns(config.data.text_column, config.data.text_pair_column,
                           config.data.label_column)
    train_path, eval_path = _data_paths(config, workdir)
    train_examples = data.read_examples(train_path, columns)
    eval_examples = data.read_examples(eval_path, columns)
    labels = data.label_names(train_examples)

    start = resolve_start(config)
    model_config = dataclasses.replace(start.config, hidden_dropout_prob=t.dropout,
                                       attention_probs_dropout_prob=t.dropout)
    seq_len = config.data.max_seq_length
    if seq_len > model_config.max_position_embeddings:
        raise UserError(f"config.data.max_seq_length ({seq_len}) exceeds the model's "
                        f"max_position_embeddings ({model_config.max_position_embeddings})")
    _check_workdir_matches(workdir, start, labels)
    tokenizer = data.make_tokenizer(start.vocab, config.data.lowercase, seq_len)
    train_arrays = data.encode(train_examples, tokenizer, labels)
    eval_arrays = data.encode(eval_examples, tokenizer, labels)  # unknown labels: an error
    say(f"{len(labels)} labels, {len(train_examples.labels)} train and "
        f"{len(eval_examples.labels)} eval examples; starting from {start.description}")

    mesh = sharding.make_mesh(config.mesh)
    model = hf.make_model(model_config, HEAD, len(labels), **encoder_options(t))
    tx, schedule = optimizer.make_optimizer(config.optimizer, t.steps)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    ckpt = checkpoint.TrainCheckpointer(workdir, config.checkpoint)
    state, state_shardings = state_lib.create_train_state(model, tx, mesh, init_rng, seq_len)
    if start.encoder is not None and ckpt.latest_step() is None:  # the pretrained encoder
        encoder = jax.device_put(start.encoder, state_shardings.params["bert"])
        state = state.replace(params=dict(state.params, bert=encoder))
    train_iter = data.make_train_iterator(train_arrays, t.global_batch_size, config.seed,
                                          jax.process_index(), jax.process_count())
    state, dropout_rng, begin = resume(ckpt, state, dropout_rng, train_iter)
    if writer_process:
        model_config.to_json_file(os.path.join(workdir, checkpoint.CONFIG_FILE))
        with open(os.path.join(workdir, RUN_FILE), "w", encoding="utf-8") as f:
            json.dump({"labels": labels, "start": start.description}, f)
        if not os.path.isfile(os.path.join(workdir, checkpoint.VOCAB_FILE)):
            with open(start.vocab, "rb") as src, open(
                    os.path.join(workdir, checkpoint.VOCAB_FILE), "wb") as dst:
                dst.write(src.read())
    writer = metrics_lib.MetricWriter(workdir, enabled=writer_process)
    writer.truncate_after(begin)

    train_step = steps.jit_train_step(mesh, state_shardings, step_fn=ft_steps.train_step,
                                      model=model, tx=tx, schedule=schedule)
    eval_step = steps.jit_eval_step(mesh, state_shardings.params, model=model,
                                    eval_fn=ft_steps.eval_step)
    example = data.eval_batches(eval_arrays, t.eval_batch_size, jax.process_index(),
                                jax.process_count())[0]
    evals = Evaluations(  # every eval reads the whole eval set
        eval_step, state.params, example, mesh,
        lambda params, final: evaluate(eval_step, params, eval_arrays, t.eval_batch_size, mesh),
        writer)
    feed = DeviceFeed(train_iter, call_sizes(begin, t.steps, t.steps_per_call,
                                             every=(t.log_every, t.eval_every, ckpt.every),
                                             at=(t.stop_after,)), mesh)
    state = train_calls(state, dropout_rng, begin, feed, train_step, t=t, ckpt=ckpt,
                        writer=writer, meter=TrainMeter(ft_steps.summarize_train),
                        evals=evals, schedule=schedule)
    final = final_eval_and_save(t.steps, state, dropout_rng, feed, evals, ckpt)
    if writer_process:
        for path in metrics_lib.plot_curves(workdir, PLOTS):
            say(f"wrote {path}")
        hf.save_pretrained(model_config, jax.device_get(state.params), export_dir,
                           vocab=os.path.join(workdir, checkpoint.VOCAB_FILE), head=HEAD,
                           labels=labels)
        say(f"exported transformers BertForSequenceClassification to {export_dir}")
    writer.close()
    return final
