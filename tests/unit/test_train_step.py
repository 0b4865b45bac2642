"""The sharded train step: mesh layouts agree with one device, a second call does not
compile, FSDP shards, gradient accumulation, overfitting, schedule and weight-decay mask."""

import functools
import logging
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from flax_bert import BertConfig, BertForPreTraining, model as model_lib
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import feed, optimizer, sharding, state as state_lib, step as steps

# One layer: the stacked-layer code is the same for any L (tests/unit/test_model.py checks L=3),
# and XLA:CPU compiles each unrolled layer again.
CFG = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=32)
SEQ, PREDS = 16, 4


def make_batch(rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    ids = rng.integers(5, CFG.vocab_size, (batch, SEQ)).astype(np.int32)
    lengths = rng.integers(SEQ // 2, SEQ + 1, (batch,))
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
    types = ((np.arange(SEQ)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int32)
    positions = np.stack([rng.choice(np.arange(1, n), PREDS, replace=False) for n in lengths])
    weights = np.ones((batch, PREDS), np.float32)
    weights[::3, -1] = 0.0  # some padding predictions
    return {
        "input_ids": ids * mask, "token_type_ids": types, "attention_mask": mask,
        "masked_positions": positions.astype(np.int32),
        "masked_ids": rng.integers(5, CFG.vocab_size, (batch, PREDS)).astype(np.int32),
        "masked_weights": weights,
        "next_sentence_label": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def opt_config(**overrides) -> ml_collections.ConfigDict:
    opt = default.get_config().optimizer
    opt.update({"warmup_steps": 2, "learning_rate": 1e-3, **overrides})
    return opt


def place(batches: list[dict[str, np.ndarray]], mesh) -> dict[str, jax.Array]:
    """Global batches as [K, B, ...] arrays split over the mesh (works with several
    processes: each process fills only the shards of its own devices)."""
    spec = sharding.batch_sharding(mesh, stacked=True)
    return {k: jax.make_array_from_callback(v.shape, spec, lambda idx, v=v: v[idx])
            for k, v in feed.stack_batches(batches).items()}


def make_step(mesh_shape, *, accum=1, cfg=CFG, opt=None, n_devices=None):
    """A fresh state on the mesh and its jitted train step (100-step schedule):
    (mesh, state, state shardings, step)."""
    devices = jax.devices()[:n_devices] if n_devices else jax.devices()
    mesh = sharding.make_mesh(ml_collections.ConfigDict(mesh_shape), devices)
    model = BertForPreTraining(cfg)
    tx, schedule = optimizer.make_optimizer(opt or opt_config(), 100)
    state, shardings = state_lib.create_train_state(model, tx, mesh, jax.random.PRNGKey(0), SEQ)
    step = steps.jit_train_step(mesh, shardings, objective=PretrainingObjective(model), tx=tx,
                                schedule=schedule, grad_accum_steps=accum)
    return mesh, state, shardings, step


def run_steps(mesh_shape, batches, *, accum=1, cfg=CFG, opt=None, n_devices=None,
              per_call=1, meter=None):
    """Train steps on `batches`, `per_call` a call, from a fresh state: (state, losses).
    `meter` (a loop.TrainMeter) gets each call's metrics."""
    mesh, state, shardings, step = make_step(mesh_shape, accum=accum, cfg=cfg, opt=opt,
                                             n_devices=n_devices)
    losses = []
    for i in range(0, len(batches), per_call):
        placed = place(batches[i:i + per_call], mesh)
        state, metrics = step(state, placed, jax.random.PRNGKey(1))
        losses += [float(x) for x in metrics["loss"]]
        if meter is not None:
            meter.add(metrics, len(metrics["loss"]), placed["input_ids"].size)
    return state, losses


def global_batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [make_batch(rng, 16) for _ in range(3)]


DATA_PARALLEL = {"data": 8, "fsdp": 1, "tensor": 1}


@functools.cache
def data_parallel_run() -> tuple[Any, list[float]]:
    """run_steps on the 8-device data-parallel mesh over global_batches(): (state, losses),
    computed once a session (the mesh-layout and the two-process tests compare with it)."""
    return run_steps(DATA_PARALLEL, global_batches())


@pytest.fixture(scope="module")
def batches():
    return global_batches()


@pytest.fixture(scope="module")
def single_device(batches):
    return run_steps({"data": 1, "fsdp": 1, "tensor": 1}, batches, n_devices=1)


@pytest.mark.parametrize("mesh_shape", [
    DATA_PARALLEL,
    {"data": 2, "fsdp": 4, "tensor": 1},
    {"data": 4, "fsdp": 1, "tensor": 2},
])
def test_mesh_layouts_match_one_device(batches, single_device, mesh_shape):
    ref_state, ref_losses = single_device
    state, losses = (data_parallel_run() if mesh_shape == DATA_PARALLEL
                     else run_steps(mesh_shape, batches))
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                        state.params, ref_state.params)
    assert max(jax.tree.leaves(diff)) <= 1e-5


def test_second_train_step_does_not_recompile(caplog):
    """The data-parallel run's step (its program, from the compilation cache), called again:
    no compile (what the benchmarks' timings rely on)."""
    mesh, state, _, step = make_step(DATA_PARALLEL)
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(1)
    state, _ = step(state, place([make_batch(rng, 16)], mesh), key)  # compiles
    caplog.set_level(logging.WARNING)
    with jax.log_compiles(True):
        caplog.clear()
        for _ in range(2):
            state, metrics = step(state, place([make_batch(rng, 16)], mesh), key)
        jax.block_until_ready(state)
    compiles = [r.getMessage() for r in caplog.records if "ompil" in r.getMessage()]
    assert compiles == [], compiles
    assert int(state.step) == 3


def test_steps_per_call_equal_single_steps(batches, single_device):
    """Three steps in one call (a lax.scan, dropout on) = three calls of one step."""
    ref_state, ref_losses = single_device
    state, losses = run_steps({"data": 1, "fsdp": 1, "tensor": 1}, batches, n_devices=1,
                              per_call=3)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-6, rtol=0)
    assert int(state.step) == 3
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                        (state.params, state.opt_state), (ref_state.params, ref_state.opt_state))
    assert max(jax.tree.leaves(diff)) <= 1e-6


def test_fsdp_shards_every_large_parameter(batches):
    state, _ = run_steps({"data": 2, "fsdp": 4, "tensor": 1}, batches[:1])
    mu = state.opt_state[1][0].mu
    for tree in (state.params, mu):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            if leaf.ndim == 2 and leaf.size >= 32 * 32:
                shard = leaf.addressable_shards[0].data
                assert shard.size * 4 == leaf.size, (jax.tree_util.keystr(path), shard.shape)


def test_gradient_accumulation_equals_big_batch():
    rng = np.random.default_rng(1)
    big = [make_batch(rng, 32) for _ in range(2)]
    cfg = BertConfig(**{**CFG.__dict__, "hidden_dropout_prob": 0.0,
                        "attention_probs_dropout_prob": 0.0})
    mesh = {"data": 8, "fsdp": 1, "tensor": 1}
    ref_state, ref_losses = run_steps(mesh, big, cfg=cfg)
    state, losses = run_steps(mesh, big, accum=4, cfg=cfg)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                        state.params, ref_state.params)
    assert max(jax.tree.leaves(diff)) <= 1e-5


def test_overfits_a_fixed_batch():
    batch = make_batch(np.random.default_rng(2), 8)
    cfg = BertConfig(**{**CFG.__dict__, "hidden_dropout_prob": 0.0,
                        "attention_probs_dropout_prob": 0.0})
    opt = opt_config(learning_rate=3e-3, warmup_steps=10, decay="constant", weight_decay=0.0)
    _, losses = run_steps({"data": 1, "fsdp": 1, "tensor": 1}, [batch] * 200, cfg=cfg, opt=opt,
                          n_devices=1)  # the mesh layouts are the tests above
    assert losses[0] > 3.0
    assert losses[-1] < 0.05, losses[-10:]


def test_schedule_warmup_then_linear_decay():
    schedule = optimizer.make_schedule(opt_config(learning_rate=1e-3, warmup_steps=10), 110)
    np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 60, 110)],
                               [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    cosine = optimizer.make_schedule(opt_config(warmup_steps=10, decay="cosine"), 110)
    np.testing.assert_allclose([cosine(10), cosine(60), cosine(110)], [1e-3, 5e-4, 0.0],
                               atol=1e-9)


def test_weight_decay_skips_layernorm_and_biases():
    params = jax.jit(BertForPreTraining(CFG).init)(jax.random.PRNGKey(0),
                                                   *model_lib.example_inputs(SEQ))["params"]
    import flax.linen as nn
    mask = optimizer.decay_mask(nn.unbox(params))
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
    for path, decayed in flat.items():
        no_decay = "LayerNorm" in path or path.endswith("['bias']")
        assert decayed != no_decay, path
    assert flat["['bert']['embeddings']['word_embeddings']['embedding']"]
    # With zero gradients, AdamW's update is the decay alone: only matrices move.
    tx, _ = optimizer.make_optimizer(opt_config(warmup_steps=0, decay="constant",
                                                weight_decay=0.1), 10)
    p = nn.unbox(params)
    zeros = jax.tree.map(np.zeros_like, p)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(p), p)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        moved = bool(np.any(np.asarray(u) != 0))
        assert moved == flat[jax.tree_util.keystr(path)], jax.tree_util.keystr(path)


def test_call_sizes_end_on_every_log_eval_checkpoint_and_stop_step():
    call_sizes = feed.call_sizes
    # From step 3 to 30, 4 per call; intervals 10 and 8 (0 = off), a stop at 12.
    sizes = list(call_sizes(3, 30, 4, every=(10, 0, 8), at=(12, 0)))
    assert sizes == [4, 1, 2, 2, 4, 4, 4, 4, 2]  # ends 7, 8, 10, 12, 16, 20, 24, 28, 30
    assert list(call_sizes(0, 12, 4, every=(4,), at=())) == [4, 4, 4]
    assert list(call_sizes(5, 5, 4, every=(4,), at=())) == []


def test_lamb_trust_ratio_is_per_layer():
    """Each row of the stacked layers gets its own ||param|| / ||update||, equal to optax's
    scale_by_trust_ratio on that layer alone; unstacked tensors are one tensor."""
    rng = np.random.default_rng(0)
    params = {"layers": {"kernel": rng.normal(size=(3, 4, 5)).astype(np.float32)},
              "embedding": rng.normal(size=(6, 4)).astype(np.float32)}
    updates = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 1e-2,
                           params)
    updates["layers"]["kernel"][1] = 0.0  # a zero update keeps ratio 1 (as optax)
    got, _ = optimizer.scale_by_layerwise_trust_ratio().update(updates, None, params)
    plain = optax.scale_by_trust_ratio()
    for i in range(3):
        want, _ = plain.update(updates["layers"]["kernel"][i], None,
                               params["layers"]["kernel"][i])
        np.testing.assert_allclose(got["layers"]["kernel"][i], want, rtol=1e-6)
    want, _ = plain.update(updates["embedding"], None, params["embedding"])
    np.testing.assert_allclose(got["embedding"], want, rtol=1e-6)
    whole, _ = plain.update(updates["layers"]["kernel"], None, params["layers"]["kernel"])
    assert not np.allclose(got["layers"]["kernel"], whole)  # not one ratio for the stack


def test_several_slices_normalise_each_slice_by_its_own_totals():
    """On S slices the loss is the mean of each slice's mean (its rows are a contiguous block
    of the batch): equal, with its gradient, to the mean of the blocks' own losses; with
    gradient accumulation too. The blocks' prediction counts differ, so the global mean
    would not match."""
    batch = make_batch(np.random.default_rng(3), 12)
    cfg = BertConfig(**{**CFG.__dict__, "hidden_dropout_prob": 0.0,
                        "attention_probs_dropout_prob": 0.0})
    mesh, state, _, _ = make_step({"data": 1, "fsdp": 1, "tensor": 1}, cfg=cfg, n_devices=1)
    objective = PretrainingObjective(BertForPreTraining(cfg))
    key = jax.random.PRNGKey(1)
    blocks = [jax.tree.map(lambda x, i=i: x[4 * i:4 * i + 4], batch) for i in range(3)]
    counts = [float(np.sum(b["masked_weights"])) for b in blocks]
    assert len(set(counts)) > 1, counts

    def mean_of_blocks(params):
        return sum(objective.loss(params, b, key, objective.loss_totals(b))[0]
                   for b in blocks) / 3

    def per_slice(params, slices=3):
        totals = steps.loss_totals_per_row(objective, batch, slices)
        return objective.loss(params, batch, key, totals)[0]

    ref, ref_grads = jax.jit(jax.value_and_grad(mean_of_blocks))(state.params)
    got, grads = jax.jit(jax.value_and_grad(per_slice))(state.params)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    global_mean = jax.jit(functools.partial(per_slice, slices=1))(state.params)
    assert abs(float(global_mean) - float(ref)) > 1e-4
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    tx, schedule = optimizer.make_optimizer(opt_config(), 100)
    _, metrics = jax.jit(functools.partial(
        steps.train_step, objective=objective, tx=tx, schedule=schedule, grad_accum_steps=2,
        slices=3))(state, batch, key)
    np.testing.assert_allclose(metrics["loss"], ref, rtol=1e-6)
