"""Pretraining (MLM + NSP) as a task of the trainer: its model, data, loss, evaluation.

    python train.py --config configs/X.py --workdir DIR     (train.py calls train_and_evaluate)

A run folder that holds a model (a trained one's config.json, or one imported into
`pretrained/` with `python -m flax_bert.hf import`) fixes the architecture: the run
continues that model, tokenizing with an imported model's vocab.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Collection, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flax_bert import losses
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.console import say
from flax_bert.data.config import DataOptions, phase1_steps
from flax_bert.data.pretraining_data import PretrainingData, pretraining_data
from flax_bert.errors import UserError
from flax_bert.model import BertForPreTraining
from flax_bert.trainer import checkpoint, checks, loop, run_folder
from flax_bert.trainer.step import real_tokens

Array = jax.Array
Batch = Mapping[str, Array]

SUM_KEYS = ("mlm_loss_sum", "mlm_correct", "mlm_count",
            "nsp_loss_sum", "nsp_correct", "nsp_count")
# (name, metric keys) of each plot: WORKDIR/<name>.png, y label <name>.
PLOTS = (("loss", ("mlm_loss", "nsp_loss")), ("accuracy", ("mlm_accuracy", "nsp_accuracy")))
# The parameters' norm is logged from the state at log steps, not summed over steps:
# with the update's norm, computing it in every step cost ~70 ms of a ~2 s BERT-Small CPU
# step (passes over parameters and updates that also split the AdamW update into more
# fusions).
global_norm = jax.jit(optax.tree.norm)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       explicit_model_fields: Collection[str] | None = None) -> dict[str, float]:
    """Runs (or resumes) pretraining in `workdir`; returns the final eval metrics.
    `explicit_model_fields`: the config.model fields the user set (train.py passes its
    --config.model.* flags); None: all of them (see checks.model_config)."""
    with loop.run_folder(config, workdir) as workdir:
        task = Pretraining.for_run(config, workdir, explicit_model_fields)
        return loop.train_and_evaluate(task, config, workdir)


def num_pairs(batch: Batch) -> Array:
    """float32 []: the batch's sentence pairs: the sum of pair_weights (packed rows), else
    its rows."""
    if "pair_weights" in batch:
        return jnp.sum(batch["pair_weights"].astype(jnp.float32))
    return jnp.float32(batch["next_sentence_label"].shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainingObjective:
    """MLM + NSP of a BertForPreTraining: the train step's loss and the eval step's sums
    (trainer.step.Objective); what the benchmarks and ahead-of-time compiles build the
    step from."""

    model: BertForPreTraining

    def loss_totals(self, batch: Batch) -> tuple[Array, Array]:
        """The whole batch's real MLM predictions and sentence pairs."""
        mlm_total = jnp.maximum(jnp.sum(batch["masked_weights"].astype(jnp.float32)), 1.0)
        return mlm_total, num_pairs(batch)

    def loss(self, params: Any, batch: Batch, dropout_rng: Array,
             totals: tuple[Array, Array]) -> tuple[Array, dict[str, Array]]:
        """Mean MLM loss over the whole batch's predictions + mean NSP loss over its pairs."""
        sums = losses.pretraining_sums(self.model, params, batch, deterministic=False,
                                       dropout_rng=dropout_rng, totals=totals)
        return sums.pop("loss"), sums

    def batch_counts(self, batch: Batch) -> dict[str, Array]:
        return {"real_tokens": real_tokens(batch), "pairs": num_pairs(batch)}

    def eval_step(self, params: Any, batch: Batch) -> dict[str, Array]:
        """Loss and accuracy sums on `batch`, no dropout."""
        return losses.pretraining_sums(self.model, params, batch, deterministic=True,
                                       dropout_rng=None)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Pretraining(PretrainingObjective):
    """BertForPreTraining on prepared sentence pairs (packed or not), in a run folder."""

    config: ml_collections.ConfigDict
    model_config: BertConfig
    data: PretrainingData
    paths: run_folder.Paths
    plots = PLOTS

    @classmethod
    def for_run(cls, config: ml_collections.ConfigDict, workdir: str,
                explicit: Collection[str] | None = None) -> Pretraining:
        """The run's model and data (prepared when missing), checked before anything trains."""
        t, paths = config.train, run_folder.Paths(workdir)
        saved_in = model_folder(paths)
        stand_in = checks.read_model_config(saved_in).vocab_size if saved_in else 1
        checks.model_config(config.model, stand_in, config.data.max_seq_length, saved_in,
                            explicit)  # a config mistake, before data is prepared
        options = DataOptions.from_config(config.data)
        imported_vocab = os.path.join(paths.pretrained, run_folder.VOCAB_FILE)
        if not options.vocab and os.path.isfile(imported_vocab):
            options = options.replace(vocab=imported_vocab)
            say(f"tokenizing with {imported_vocab}")
        phase1 = phase1_steps(t, config.data.max_seq_length)
        data = pretraining_data(options, paths.prepared, phase1_steps=phase1,
                                phase1_seq_length=t.phase1_seq_length,
                                phase1_batch_size=t.phase1_batch_size)
        model_config = checks.model_config(config.model, data.meta["vocab_size"],
                                           data.seq_length, saved_in, explicit)
        check_vocab(model_config, data.meta["vocab_size"])
        checks.check_batch(config, ("global_batch_size",) + (("phase1_batch_size",) if phase1
                                                             else ()), jax.process_count())
        if phase1 and not os.path.isdir(paths.checkpoints):
            say(f"phase 1: steps 1-{phase1} on {t.phase1_seq_length}-token examples "
                f"({data.phase1.prepared_dir}), then {data.seq_length}-token examples")
        model = BertForPreTraining(model_config, Compute.from_config(t))
        return cls(model, config=config, model_config=model_config, data=data, paths=paths)

    @property
    def seq_length(self) -> int:
        return self.data.seq_length

    @property
    def boundaries(self) -> tuple[int, ...]:
        return (self.data.phase1.steps,) if self.data.phase1 else ()

    # ---- Data, evaluation, the run folder's files. --------------------------------------
    def train_batches(self) -> Any:
        return self.data.train_iterator(self.config.train.global_batch_size, self.config.seed)

    def eval_batches(self) -> Iterable[dict]:
        return self.data.eval_batches(self.config.train.global_batch_size)

    def evaluate(self, eval_on: Callable[[dict], Any], batches: Iterable[dict],
                 final: bool) -> dict[str, float]:
        """MLM and NSP metrics over the first eval_batches (final: final_eval_batches; 0:
        all) held-out batches, and the number of examples read."""
        t = self.config.train
        limit, totals = t.final_eval_batches if final else t.eval_batches, None
        for i, local in enumerate(batches):
            if limit and i >= limit:
                break
            sums = eval_on(local)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.device_get(totals)
        return dict(losses.summarize(totals), examples=float(totals["nsp_count"]))

    def summarize(self, totals: dict[str, Any]) -> dict[str, float]:
        return losses.summarize({k: totals[k] for k in SUM_KEYS})

    def log_fields(self, state: Any) -> dict[str, float]:
        return {"param_norm": float(global_norm(state.params))}

    def initial_params(self) -> dict | None:
        """An imported model's weights (continued pretraining), else None."""
        if not os.path.isdir(self.paths.pretrained):
            return None
        say(f"initialising from {self.paths.pretrained} (continued pretraining)")
        return checkpoint.load_params(self.paths.pretrained)

    def write_files(self) -> None:
        run_folder.install_vocab(self.data.vocab, self.paths)
        self.model_config.to_json_file(self.paths.config)

    def export(self, params: Any) -> None:
        """Nothing beyond the checkpoints (`python -m flax_bert.hf export` converts them)."""


def model_folder(paths: run_folder.Paths) -> str | None:
    """The folder whose config.json fixes the run's model: the run folder once it has
    trained, else an imported model's; None for a new model of config.model."""
    for folder in (paths.root, paths.pretrained):
        if os.path.isfile(os.path.join(folder, run_folder.CONFIG_FILE)):
            return folder
    return None


def check_vocab(model_config: BertConfig, data_vocab_size: int) -> None:
    """The data's token ids must be the model's."""
    if model_config.vocab_size != data_vocab_size:
        raise UserError(
            f"the data's vocab has {data_vocab_size} tokens but config.model.vocab_size is "
            f"{model_config.vocab_size}; set --config.model.vocab_size={data_vocab_size} "
            f"(or 0: take the data's), or tokenize with the model's vocab (config.data.vocab)")
