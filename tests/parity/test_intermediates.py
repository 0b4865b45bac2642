"""`sow` intermediates: HF's hidden_states / attentions on imported weights, the same
layout and numbers with remat, and an unchanged train step when nobody asks."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from flax_bert import BertForPreTraining, BertModel, model as model_lib
from flax_bert.compute import Compute
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import optimizer, state as state_lib, step as steps
from tests.unit import test_train_step

CFG = dataclasses.replace(test_train_step.CFG, num_hidden_layers=2)  # a layer after a layer
make_batch, opt_config = test_train_step.make_batch, test_train_step.opt_config

REMAT = ("none", "nothing_saveable")


def hidden_states_and_attentions(intermediates: dict) -> tuple[list, list]:
    """HF's order: [embeddings, layer 0, ..., layer L-1] outputs, and [layer 0, ...] probs."""
    layers = [intermediates["encoder"][f"layer_{i}"]
              for i in range(len(intermediates["encoder"]))]
    hidden = [intermediates["embeddings"]["hidden_states"][0]]
    hidden += [layer["hidden_states"][0] for layer in layers]
    return hidden, [layer["attention"]["self"]["attention_probs"][0] for layer in layers]


def test_intermediates_match_transformers(tmp_path):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from flax_bert import hf
    from tests.parity.test_hf import SMALL, TOL, _batch, _maxdiff, _torch_model

    model = _torch_model(transformers.BertForPreTraining)
    model.save_pretrained(tmp_path)
    config, params = hf.load_pretrained(str(tmp_path))
    batch = _batch()  # [B=3, S=12], padding in two rows
    ids, types, mask = (x.astype(np.int64) for x in batch)
    import torch
    with torch.no_grad():
        ref = model.bert(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                         attention_mask=torch.from_numpy(mask), output_hidden_states=True,
                         output_attentions=True)
    assert len(ref.hidden_states) == SMALL["num_hidden_layers"] + 1
    for policy in REMAT:
        apply = jax.jit(lambda p, *b: BertModel(config, Compute(remat_policy=policy)).apply(
            {"params": p}, *b, mutable=["intermediates"]))
        _, variables = apply(params["bert"], *batch)
        hidden, attentions = hidden_states_and_attentions(variables["intermediates"])
        d = {"hidden": max(_maxdiff(a, b) for a, b in zip(hidden, ref.hidden_states)),
             "attentions": max(_maxdiff(a, b) for a, b in zip(attentions, ref.attentions))}
        print(f"max |delta| intermediates vs transformers, remat {policy}:", d)
        assert len(hidden) == len(ref.hidden_states) and len(attentions) == len(ref.attentions)
        assert max(d.values()) <= TOL, d


def test_remat_records_the_same_with_dropout():
    """Dropout on: remat (a lax.scan) records the same tree and values as the unrolled
    layers; recording does not change the outputs; the last hidden state is the output."""
    batch = make_batch(np.random.default_rng(0), 4)
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    params = nn.unbox(jax.jit(BertModel(CFG).init)(jax.random.key(0), *inputs)["params"])
    rngs = {"dropout": jax.random.key(1)}
    runs = {}
    for policy in REMAT:
        model = BertModel(CFG, Compute(remat_policy=policy))
        runs[policy] = jax.jit(lambda p: model.apply(
            {"params": p}, *inputs, deterministic=False, rngs=rngs, mutable=["intermediates"]))(
                params)
        (seq, _), variables = runs[policy]
        hidden, attentions = hidden_states_and_attentions(variables["intermediates"])
        np.testing.assert_array_equal(hidden[-1], seq)
        assert [a.shape for a in attentions] == [(4, CFG.num_attention_heads, 16, 16)] * 2
        np.testing.assert_allclose(np.sum(attentions[0], -1), 1.0, atol=1e-6)
    # The scan's body returns more when recording; its sequence output stays the same.
    plain, _ = jax.jit(lambda p: BertModel(CFG, Compute(remat_policy="nothing_saveable")).apply(
        {"params": p}, *inputs, deterministic=False, rngs=rngs))(params)
    np.testing.assert_array_equal(runs["nothing_saveable"][0][0], plain)
    ref, got = runs["none"][1], runs["nothing_saveable"][1]
    assert jax.tree.structure(ref) == jax.tree.structure(got)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), ref, got)


def _lowered_steps(compute: Compute) -> dict[str, str]:
    """StableHLO of the train step and the eval step (as train.py builds the model)."""
    model = BertForPreTraining(CFG, compute)
    tx, schedule = optimizer.make_optimizer(opt_config(), 100)
    params = jax.eval_shape(lambda: nn.unbox(model.init(
        jax.random.key(0), *model_lib.example_inputs(16))["params"]))  # shapes only
    state = state_lib.TrainState(step=np.int32(0), params=params,
                                 opt_state=jax.eval_shape(tx.init, params),
                                 nonfinite_run=np.int32(0))
    batch = make_batch(np.random.default_rng(0), 4)
    objective = PretrainingObjective(model)
    train = jax.jit(lambda s, b, r: steps.train_step(s, b, r, objective=objective, tx=tx,
                                                     schedule=schedule))
    probe = jax.jit(lambda p, b: model.apply(
        {"params": p}, b["input_ids"], b["token_type_ids"], b["attention_mask"],
        mutable=["intermediates"]))
    return {"train": train.lower(state, batch, jax.random.key(1)).as_text(),
            "eval": jax.jit(objective.eval_step).lower(params, batch).as_text(),
            "probe": probe.lower(params, batch).as_text()}


@pytest.mark.parametrize("remat_policy", REMAT)
def test_train_step_unchanged_without_intermediates(monkeypatch, remat_policy):
    """Not asked for, intermediates leave the train and eval steps' programs as they are
    with recording switched off altogether (`sow` a no-op, the collection never mutable):
    the same StableHLO, hence the same compiled step. (Asked for, the programs differ.)"""
    asked = _lowered_steps(Compute(remat_policy=remat_policy))
    is_mutable = nn.Module.is_mutable_collection
    monkeypatch.setattr(nn.Module, "sow", lambda self, *args, **kwargs: False)
    monkeypatch.setattr(nn.Module, "is_mutable_collection",
                        lambda self, col: col != "intermediates" and is_mutable(self, col))
    off = _lowered_steps(Compute(remat_policy=remat_policy))
    assert asked["train"] == off["train"]
    assert asked["eval"] == off["eval"]
    assert "dot_general" in asked["train"]
    assert asked["probe"] != off["probe"]  # The switch does turn recording off.
