"""Packed rows (several sentence pairs a row): each pair computes what it computes alone,
unpacked (hidden states, attention, MLM and NSP logits, losses, gradients, train steps on
device meshes, the task heads); unpacked batches run today's programs; the train rows
count real tokens, padding and pairs."""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bert import BertForPreTraining, BertModel, functional, heads, model as model_lib
from flax_bert.compute import Compute
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import loop
from tests import packing
from tests.unit.test_train_step import CFG as DROPOUT_CFG, run_steps

# One layer (XLA:CPU compiles ~6 s per unrolled layer of a gradient): attention leaking
# across pairs already changes its output. No dropout: a pair's dropout mask depends on
# where it sits.
CFG = dataclasses.replace(DROPOUT_CFG, num_hidden_layers=1, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
SEQ, PACKED_SEQ, PAIRS, PREDS = 16, 32, 3, 3  # unpacked and packed row lengths
ROWS = [[0, 1, 2], [3, 4], [5], [6, 7]]  # the examples of each packed row
TOL = 1e-5


def _examples(seed: int, num: int) -> dict[str, np.ndarray]:
    return packing.examples(np.random.default_rng(seed), num, SEQ, PREDS, CFG.vocab_size,
                            min_len=4, max_len=10)


@pytest.fixture(scope="module")
def unpacked():
    return _examples(0, 8)


@pytest.fixture(scope="module")
def packed(unpacked):
    return packing.pack(unpacked, ROWS, PACKED_SEQ, PAIRS)


@pytest.fixture(scope="module")
def params():
    return jax.jit(functional.init, static_argnums=0)(CFG, jax.random.key(0))


def _inputs(batch):
    return (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])


@functools.partial(jax.jit, static_argnums=2)
def _outputs(params, batch, impl):
    """(sequence [B, S, H], MLM logits at masked_positions, NSP logits) with `impl`."""
    compute = Compute(attention_impl=impl)
    packed_in = model_lib.packed_inputs(batch)
    seq, _ = BertModel(CFG, compute).apply({"params": params["bert"]}, *_inputs(batch),
                                           **packed_in)
    mlm, nsp = BertForPreTraining(CFG, compute).apply(
        {"params": params}, *_inputs(batch), masked_positions=batch["masked_positions"],
        **packed_in)
    return seq, mlm, nsp


def _assert_pairs_equal(unpacked, rows, packed_out, alone_out):
    """Each pair's values in its packed row (tokens, prediction slots, NSP slot) equal
    its own row's, run alone."""
    seq_p, mlm_p, nsp_p = (np.asarray(x) for x in packed_out)
    seq_u, mlm_u, nsp_u = (np.asarray(x) for x in alone_out)
    used = unpacked["masked_weights"] > 0
    for row, i, ex, offset, n in packing.slots(unpacked, rows):
        np.testing.assert_allclose(seq_p[row, offset:offset + n], seq_u[ex, :n],
                                   atol=TOL, rtol=0)
        slots = slice(i * PREDS, (i + 1) * PREDS)
        np.testing.assert_allclose(mlm_p[row, slots][used[ex]], mlm_u[ex][used[ex]],
                                   atol=TOL, rtol=0)
        np.testing.assert_allclose(nsp_p[row, i], nsp_u[ex], atol=TOL, rtol=0)


def test_packed_rows_equal_each_pair_alone(params, unpacked, packed):
    """Explicit and XLA-fused attention: every pair of a packed row has the hidden states,
    MLM logits and NSP logits it has alone in an unpacked row; both paths agree on the
    whole packed output, padding included."""
    alone = _outputs(params, unpacked, "explicit")
    out = {impl: _outputs(params, packed, impl) for impl in ("explicit", "xla")}
    assert out["xla"][2].shape == (len(ROWS), PAIRS, 2)
    for impl in out:
        _assert_pairs_equal(unpacked, ROWS, out[impl], alone)
    for got, want in zip(out["xla"], out["explicit"]):
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # Without pair_ids, the pairs of a row would attend to each other.
    mixed = _outputs(params, {k: v for k, v in packed.items() if k != "pair_ids"}, "xla")
    assert float(jnp.max(jnp.abs(mixed[0] - out["xla"][0]))) > 1e-2


def test_packed_attention_probes_are_block_diagonal(params, unpacked, packed):
    """The recorded attention probabilities (the explicit path) of each pair are its own,
    and a query gives no weight to another pair's keys."""
    def probs(batch):
        _, state = BertModel(CFG).apply({"params": params["bert"]}, *_inputs(batch),
                                        **model_lib.packed_inputs(batch), mutable=["intermediates"])
        attention = state["intermediates"]["encoder"]["layer_0"]["attention"]
        return np.asarray(attention["self"]["attention_probs"][0])  # [B, N, S, S]

    packed_probs, alone = probs(packed), probs(unpacked)
    for row, _, ex, offset, n in packing.slots(unpacked, ROWS):
        block = slice(offset, offset + n)
        np.testing.assert_allclose(packed_probs[row, :, block, block], alone[ex, :, :n, :n],
                                   atol=TOL, rtol=0)
        np.testing.assert_allclose(packed_probs[row, :, block].sum(-1), 1.0, atol=TOL)


def test_packed_losses_and_gradients_equal_unpacked(params, unpacked, packed):
    """MLM mean over all masked tokens + NSP mean over the pairs, their sums and the
    gradient: packed = the same pairs unpacked (pair_weights count the pairs)."""
    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, b: functional.pretraining_loss(p, b, None, config=CFG), has_aux=True))
    (loss_p, sums_p), grads_p = grad_fn(params, packed)
    (loss_u, sums_u), grads_u = grad_fn(params, unpacked)
    assert float(sums_p["nsp_count"]) == len(unpacked["input_ids"]) == 8
    for key in sums_u:
        np.testing.assert_allclose(sums_p[key], sums_u[key], rtol=1e-6, atol=TOL, err_msg=key)
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=TOL, rtol=0),
                 grads_p, grads_u)
    # An eval batch's padding rows (pair_weights 0) do not count.
    padded = {k: np.concatenate([v, v[:1]]) for k, v in packed.items()}
    padded["pair_weights"][-1] = 0.0
    eval_sums = jax.jit(PretrainingObjective(BertForPreTraining(CFG)).eval_step)(
        params, padded)
    np.testing.assert_allclose(eval_sums["nsp_loss_sum"], sums_u["nsp_loss_sum"], rtol=1e-6)
    assert float(eval_sums["nsp_count"]) == 8


def _global_batches(seed: int, steps_: int = 3) -> tuple[list, list]:
    """Packed global batches of 16 rows (1, 2 or 3 pairs each) and the same pairs
    unpacked, for `steps_` steps."""
    rows_per_step = [[3, 1, 2, 2][r % 4] for r in range(16)]
    packed_batches, unpacked_batches = [], []
    for step in range(steps_):
        examples = _examples(seed + step, sum(rows_per_step))
        starts = np.cumsum([0] + rows_per_step)
        rows = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]
        packed_batches.append(packing.pack(examples, rows, PACKED_SEQ, PAIRS))
        unpacked_batches.append(examples)
    return packed_batches, unpacked_batches


def _run(batches, mesh_shape=None):
    """run_steps (one step a call) on `batches`: (state, losses, the TrainMeter of them,
    its summed metrics)."""
    meter = loop.TrainMeter(lambda totals: {})
    state, losses = run_steps(mesh_shape or {"data": 1, "fsdp": 1, "tensor": 1}, batches,
                              cfg=CFG, n_devices=None if mesh_shape else 1, meter=meter)
    return state, losses, meter, jax.device_get(meter.totals)


@pytest.fixture(scope="module")
def step_batches():
    return _global_batches(1)


@pytest.fixture(scope="module")
def packed_run(step_batches):
    return _run(step_batches[0])


@pytest.fixture(scope="module")
def unpacked_run(step_batches):
    return _run(step_batches[1])


@pytest.mark.parametrize("mesh_shape", [{"data": 8, "fsdp": 1, "tensor": 1},
                                        {"data": 2, "fsdp": 4, "tensor": 1}])
def test_packed_train_steps_on_meshes_equal_one_device(mesh_shape, step_batches, packed_run):
    """Packed batches split over data=8 or data=2 x fsdp=4: losses and params after 3
    steps = one device's."""
    ref_state, ref_losses = packed_run[:2]
    state, losses = _run(step_batches[0], mesh_shape)[:2]
    np.testing.assert_allclose(losses, ref_losses, atol=TOL, rtol=0)
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                        state.params, ref_state.params)
    assert max(jax.tree.leaves(diff)) <= TOL


def test_packed_train_steps_equal_unpacked(packed_run, unpacked_run):
    """The train step's losses on packed rows = on the same pairs unpacked (NSP: a mean
    over the pairs)."""
    np.testing.assert_allclose(packed_run[1], unpacked_run[1], atol=TOL, rtol=0)


def test_train_rows_count_real_tokens_padding_and_pairs(step_batches, packed_run,
                                                        unpacked_run):
    """tokens_per_sec counts the real tokens (the attention_mask's sum), packed or not;
    padding_fraction is the share of padding slots; pairs_per_step the mean pairs."""
    for batches, run in zip(step_batches, (packed_run, unpacked_run)):
        row = run[2].summary()
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        slots = sum(b["attention_mask"].size for b in batches)
        assert 0 < real < slots and float(run[3]["real_tokens"]) == real
        # Both rates are over the same seconds: their ratio is real tokens per step.
        assert row["tokens_per_sec"] / row["steps_per_sec"] == pytest.approx(
            real / len(batches), rel=1e-6)
        assert row["padding_fraction"] == pytest.approx(1 - real / slots, rel=1e-6)
        assert row["pairs_per_step"] == 32  # 16 rows of 1-3 pairs; 32 rows of one


def test_unpacked_step_numbers_unchanged_by_the_counts(monkeypatch, step_batches,
                                                       unpacked_run):
    """What the train step adds for unpacked batches, its counts for the metric rows
    (PretrainingObjective.batch_counts), changes none of its numbers: params, optimizer state and every
    other metric are bitwise those of the step without it. (That the rest of the unpacked
    programs is the branch point's, op for op: test_unpacked_programs_equal_a_commit.)"""
    monkeypatch.setattr(PretrainingObjective, "batch_counts", lambda self, batch: {})
    state, losses, _, totals = _run(step_batches[1])
    jax.tree.map(np.testing.assert_array_equal, state, unpacked_run[0])
    assert losses == unpacked_run[1]
    ref_totals = unpacked_run[3]
    assert set(ref_totals) - set(totals) == {"real_tokens", "pairs"}
    for key in totals:
        np.testing.assert_array_equal(totals[key], ref_totals[key], err_msg=key)


@pytest.mark.skipif(not os.environ.get("FLAX_BERT_BASE"),
                    reason="set FLAX_BERT_BASE to a git commit to compare its programs")
def test_unpacked_programs_equal_a_commit(tmp_path):
    """Opt-in (FLAX_BERT_BASE=<commit>, e.g. the branch point of packing): the StableHLO of
    the unpacked train step (its count outputs left out), eval step, encoder, probe and
    fine-tuning head lowered from that commit's code and from this tree are identical."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base = tmp_path / "commit"
    base.mkdir()
    archive = subprocess.run(["git", "archive", os.environ["FLAX_BERT_BASE"]], cwd=here,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    script = os.path.join(here, "tests", "hlo_programs.py")
    texts = {}
    for name, root in (("base", str(base)), ("here", here)):
        out = tmp_path / name
        env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=8")
        subprocess.run([sys.executable, script, str(out)], env=env, check=True, cwd=root)
        texts[name] = {p: (out / p).read_text() for p in sorted(os.listdir(out))}
    assert sorted(texts["here"]) == sorted(texts["base"]) and len(texts["here"]) == 9
    for program in texts["base"]:
        assert texts["here"][program] == texts["base"][program], program


def test_task_heads_on_packed_rows_equal_each_sequence_alone(unpacked, packed):
    """Sequence classification (at each pair's [CLS]), token classification and QA."""
    for head, extra in ((heads.BertForSequenceClassification(CFG, num_labels=3),
                         {"cls_positions": packed["cls_positions"]}),
                        (heads.BertForTokenClassification(CFG, num_labels=3), {}),
                        (heads.BertForQuestionAnswering(CFG), {})):
        variables = jax.jit(head.init)(jax.random.key(1), *_inputs(unpacked))
        apply = jax.jit(head.apply)
        alone = apply(variables, *_inputs(unpacked))
        got = apply(variables, *_inputs(packed), position_ids=packed["position_ids"],
                    pair_ids=packed["pair_ids"], **extra)
        alone = np.stack(alone, -1) if isinstance(alone, tuple) else np.asarray(alone)
        got = np.stack(got, -1) if isinstance(got, tuple) else np.asarray(got)
        for row, i, ex, offset, n in packing.slots(unpacked, ROWS):
            if extra:
                np.testing.assert_allclose(got[row, i], alone[ex], atol=TOL, rtol=0)
            else:
                np.testing.assert_allclose(got[row, offset:offset + n], alone[ex, :n],
                                           atol=TOL, rtol=0)
