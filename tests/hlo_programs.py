"""Writes the StableHLO of the unpacked programs (train steps, eval step, encoder, probe,
fine-tuning step), lowered from the flax_bert on PYTHONPATH, one file each, into the folder
given: `python tests/hlo_programs.py OUT`. test_packing.py compares a commit's with this
tree's. The train steps' metric-row counts (the objectives' batch_counts), added outputs
that change no other number, are left out, so that a commit from before them lowers the
same programs."""

import os
import sys

import jax
import ml_collections
import numpy as np

from flax_bert import BertModel, functional
from flax_bert.compute import Compute
from flax_bert.heads import BertForSequenceClassification
from flax_bert.model import BertForPreTraining
from flax_bert.tasks.classification import Classification
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import optimizer, sharding, state as state_lib, step as steps
from tests.unit.test_train_step import CFG, SEQ, make_batch, opt_config, place


def _no_counts(self, batch):
    return {}


def programs() -> dict[str, str]:
    PretrainingObjective.batch_counts = Classification.batch_counts = _no_counts
    batch = make_batch(np.random.default_rng(0), 8)
    ids, types, mask = (batch[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
    tx, schedule = optimizer.make_optimizer(opt_config(), 100)
    texts = {}
    for name, compute, mesh_shape, accum in [
            ("default", Compute(), {"data": 2, "fsdp": 4, "tensor": 1}, 1),
            ("explicit_accum", Compute(attention_impl="explicit"), {"data": 8}, 2),
            ("remat_scan_bf16", Compute(remat_policy="nothing_saveable", dtype="bfloat16"),
             {"data": 1}, 1)]:
        mesh_shape = {"data": 1, "fsdp": 1, "tensor": 1, **mesh_shape}
        devices = jax.devices()[:int(np.prod(list(mesh_shape.values())))]
        mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_shape), devices)
        model = BertForPreTraining(CFG, compute)
        state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.key(0),
                                                        SEQ)
        train = steps.jit_train_step(mesh, shardings, objective=PretrainingObjective(model),
                                     tx=tx, schedule=schedule, grad_accum_steps=accum)
        texts[f"train_{name}"] = train.lower(state, place([batch, batch], mesh),
                                             jax.random.key(1)).as_text()
        evaluate = steps.jit_eval_step(mesh, shardings.params, PretrainingObjective(model))
        texts[f"eval_{name}"] = evaluate.lower(state.params, batch).as_text()
    params = functional.init(CFG, jax.random.key(0))
    texts["encode"] = jax.jit(lambda p: functional.encode(
        p, batch, config=CFG, rng=jax.random.key(3))).lower(params).as_text()
    texts["probe"] = jax.jit(lambda p: BertModel(CFG).apply(
        {"params": p["bert"]}, ids, types, mask, mutable=["intermediates"])).lower(
        params).as_text()
    head = BertForSequenceClassification(CFG, num_labels=3)
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 8, "fsdp": 1, "tensor": 1}))
    state, shardings = state_lib.create_train_state(head, tx, mesh, jax.random.key(0), SEQ)
    run = ml_collections.ConfigDict({"train": {"global_batch_size": 8, "eval_batch_size": 8,
                                               "grad_accum_steps": 1}})
    objective = Classification(run, None, None, CFG, [], head, {}, {}, export_dir="")
    train = steps.jit_train_step(mesh, shardings, objective=objective, tx=tx, schedule=schedule)
    labelled = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                "label": batch["next_sentence_label"]}
    texts["finetune_train"] = train.lower(state, place([labelled], mesh),
                                          jax.random.key(1)).as_text()
    return texts


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    for name, text in programs().items():
        with open(os.path.join(sys.argv[1], name + ".mlir"), "w") as f:
            f.write(text)
