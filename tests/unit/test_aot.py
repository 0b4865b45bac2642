"""The ahead-of-time TPU check (flax_bert/aot.py): slice names, and tiny configs compiled for
TPU topologies from libtpu (no TPU): memory, FLOPs against the analytic count, multi-slice
collectives, packed attention, the one-line refusals."""

import importlib.util

import pytest

from flax_bert import aot, run_config, tpu_chips

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (pip install -e '.[test]' "
                                       "installs it): nothing compiles for a TPU")

# One layer, small vocab, seq 32: a few seconds a compile.
TINY = ["--config=configs/default.py", "--config.model.num_hidden_layers=1",
        "--config.model.hidden_size=64", "--config.model.num_attention_heads=2",
        "--config.model.intermediate_size=128",
        "--config.model.vocab_size=512", "--config.data.max_seq_length=32",
        "--config.data.max_predictions_per_seq=5", "--config.train.global_batch_size=16",
        "--config.train.phase1_fraction=0", "--config.train.dtype=bfloat16",
        "--config.train.steps_per_call=2"]


def config_of(*overrides: str):
    return run_config.load([*TINY, *overrides], "aot")


@pytest.mark.parametrize("name, grid, chips, accelerator", [
    ("v4-8", "v4:2x2x1", 4, "v4-8"),
    ("v4-32", "v4:2x2x4", 16, "v4-32"),
    ("v5p-32", "v5p:2x2x4", 16, "v5p-32"),
    ("v5e-16", "v5e:4x4", 16, "v5litepod-16"),
    ("v5litepod-16", "v5e:4x4", 16, "v5litepod-16"),
    ("v5litepod-8", "v5e:2x4", 8, "v5litepod-8"),
    ("v6e-8", "v6e:2x4", 8, "v6e-8"),
    ("v5e:4x4", "v5e:4x4", 16, "v5litepod-16"),
    ("V5E:2x2", "v5e:2x2", 4, "v5litepod-4"),
    ("v4:2x2x1", "v4:2x2x1", 4, "v4-8"),
    ("v4:2x2", "v4:2x2x1", 4, "v4-8"),
])
def test_topology_names(name, grid, chips, accelerator):
    topology = tpu_chips.parse(name)
    assert (topology.topology_name, topology.chips, topology.accelerator_type) == (
        grid, chips, accelerator)


@pytest.mark.parametrize("name, says", [
    ("v4-6", "counts TensorCores"), ("v5e-3", "counts chips"), ("v9-8", "unknown TPU"),
    ("v5e", "slice name"), ("v5e:4x4x2", "AxB grid"),
])
def test_topology_name_errors(name, says):
    with pytest.raises(ValueError, match=says):
        tpu_chips.parse(name)


def check_report(r, devices):
    m, f = r["memory"], r["flops"]
    assert r["devices"] == devices
    for key in ("params", "opt_state", "batch", "arguments", "outputs", "temporaries",
                "total"):
        assert m[key] > 0, key
    # Arguments are the state and the batch (and the rng), laid out in tiles (a tiny
    # model's 64-wide vectors take 128 elements); the state is donated.
    state_and_batch = m["params"] + m["opt_state"] + m["batch"]
    assert state_and_batch <= m["arguments"] <= 2 * state_and_batch
    assert m["aliased"] >= m["params"] + m["opt_state"]
    assert m["total"] == (m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
                          + m["code"])
    assert m["fits"] and m["margin"] == m["hbm"] - m["total"]
    # Adam: two moments a parameter.
    assert m["opt_state"] == pytest.approx(2 * m["params"], rel=0.01)
    assert f["compiled_per_step"] == pytest.approx(f["analytic_per_step"], rel=0.10)
    assert f["loop_scale"] > 1  # the steps_per_call loop
    roof = r["roofline"]
    assert roof["bound_step_s"] > 0 and 0 < roof["mfu"] < 1
    # A call reads the state (params, Adam's moments) from HBM and writes it back at least
    # once, whatever it keeps on chip in between.
    state_rw = 2 * (m["params"] + m["opt_state"])
    assert roof["hbm_bytes_per_step"] * r["steps_per_call"] >= state_rw
    assert r["collectives"]["all-reduce"]["count"] > 0  # the gradients over data


@pytest.mark.parametrize("name, devices", [("v5e:2x2", 4), ("v4:2x2x1", 8)])
def test_tiny_compiles(name, devices):
    r = aot.analyse(config_of(), tpu_chips.parse(name))
    check_report(r, devices)
    assert r["eval"]["fits"] and r["eval"]["total"] > 0
    text = aot.format_report(r)
    assert "fits:" in text and "bound" in text


def test_fsdp_tensor_mesh_and_grad_accum():
    r = aot.analyse(config_of("--config.mesh.data=1", "--config.mesh.fsdp=2",
                              "--config.mesh.tensor=2", "--config.train.grad_accum_steps=2"),
                    tpu_chips.parse("v5e:2x2"), with_eval=False)
    assert r["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
    # Parameters split 2 ways (fsdp) for the embed axis, 2 (tensor) for heads / mlp / vocab.
    assert r["memory"]["params"] < 0.5 * aot.analyse(
        config_of(), tpu_chips.parse("v5e:2x2"), with_eval=False)["memory"]["params"]
    assert r["flops"]["compiled_per_step"] == pytest.approx(
        r["flops"]["analytic_per_step"], rel=0.10)


def test_packed_rows_compile():
    """Packed rows: the block-diagonal [B, 1, S, S] mask through XLA's fused attention."""
    r = aot.analyse(config_of("--config.data.packing=True",
                              "--config.model.attention_probs_dropout_prob=0.0"),
                    tpu_chips.parse("v5e:2x2"))
    assert r["packed"] and r["memory"]["fits"] and r["eval"]["fits"]


def test_two_slices_cross_only_gradient_reduction():
    r = aot.analyse(config_of(), tpu_chips.parse("v5e:2x2"), num_slices=2, with_eval=False)
    assert r["devices"] == 8 and r["mesh"]["data"] == 8
    cross = {k for k in r["collectives"] if k.startswith("cross-slice")}
    assert cross == {"cross-slice all-reduce"}
    assert r["roofline"]["terms_per_step_s"]["dcn"] > 0


def test_too_big_is_one_line(capsys):
    # A 20M-token vocab: 5 GB of embedding, 10 GB of Adam moments, more in logits.
    code = aot.main(["aot", "--topology", "v5e:2x2", "--no-eval", *TINY,
                     "--config.model.vocab_size=20000000"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "does not fit" in line]
    assert code == 1 and len(lines) == 1
    assert "more than its" in lines[0] and "GiB HBM" in lines[0]


@pytest.mark.parametrize("args, says", [
    (["--topology", "v5e-3"], "--topology v5e-3"),
    (["--topology", "v5e:2x2", "--config.train.attention_impl=cudnn"], "GPU kernel"),
    (["--topology", "v5e:2x2", "--config.mesh.data=3"], "config.mesh"),
    (["--topology", "v5e:2x2", "--config.train.global_batch_size=6"], "global_batch_size=6"),
    (["--topology", "v5e:2x2", "--config.train.nope=1"], "--config"),
])
def test_mistakes_are_one_line(args, says, capsys):
    # Overrides after TINY win (the last of a field's flags is taken).
    assert aot.main(["aot", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]


# A scan of 4 layers, by hand: each iteration slices its layer's weights (a 128 KiB f32
# [256, 128] slice of the [4, 256, 128] stack) into VMEM (S(1): no HBM write), adds them to
# x (reads x, writes y: the weights are read from VMEM), saves y into a [4, 256, 128]
# buffer in place (reads y, writes its slice; the buffer is not read), and counts (s32
# scalars). The entry copies an f32[64], which a TPU lays out in 128 elements.
STACK = """HloModule m, is_scheduled=true

%slice_layer (param_0: f32[4,256,128], param_1: s32[]) -> f32[256,128] {
  %param_0 = f32[4,256,128]{2,1,0:T(8,128)} parameter(0)
  %param_1 = s32[]{:T(128)} parameter(1)
  %zero = s32[]{:T(128)} constant(0)
  %ds = f32[1,256,128]{2,1,0:T(8,128)} dynamic-slice(%param_0, %param_1, %zero, %zero), dynamic_slice_sizes={1,256,128}
  ROOT %b = f32[256,128]{1,0:T(8,128)S(1)} bitcast(%ds)
}

%add_layer (param_0: f32[256,128], param_1: f32[256,128]) -> f32[256,128] {
  %param_0 = f32[256,128]{1,0:T(8,128)} parameter(0)
  %param_1 = f32[256,128]{1,0:T(8,128)S(1)} parameter(1)
  ROOT %sum = f32[256,128]{1,0:T(8,128)} add(%param_0, %param_1)
}

%save_layer (param_0: f32[4,256,128], param_1: f32[256,128], param_2: s32[]) -> f32[4,256,128] {
  %param_0 = f32[4,256,128]{2,1,0:T(8,128)} parameter(0)
  %param_1 = f32[256,128]{1,0:T(8,128)} parameter(1)
  %param_2 = s32[]{:T(128)} parameter(2)
  %b = f32[1,256,128]{2,1,0:T(8,128)} bitcast(%param_1)
  %zero = s32[]{:T(128)} constant(0)
  ROOT %dus = f32[4,256,128]{2,1,0:T(8,128)} dynamic-update-slice(%param_0, %b, %param_2, %zero, %zero)
}

%body (p: (s32[], f32[256,128], f32[4,256,128], f32[4,256,128])) -> (s32[], f32[256,128], f32[4,256,128], f32[4,256,128]) {
  %p = (s32[]{:T(128)}, f32[256,128]{1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %x = f32[256,128]{1,0:T(8,128)} get-tuple-element(%p), index=1
  %ws = f32[4,256,128]{2,1,0:T(8,128)} get-tuple-element(%p), index=2
  %buf = f32[4,256,128]{2,1,0:T(8,128)} get-tuple-element(%p), index=3
  %w = f32[256,128]{1,0:T(8,128)S(1)} fusion(%ws, %i), kind=kLoop, calls=%slice_layer
  %y = f32[256,128]{1,0:T(8,128)} fusion(%x, %w), kind=kLoop, calls=%add_layer
  %buf.1 = f32[4,256,128]{2,1,0:T(8,128)} fusion(%buf, %y, %i), kind=kLoop, calls=%save_layer
  %one = s32[]{:T(128)} constant(1)
  %i.1 = s32[]{:T(128)} add(%i, %one)
  ROOT %t = (s32[]{:T(128)}, f32[256,128]{1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}) tuple(%i.1, %y, %ws, %buf.1)
}

%cond (p: (s32[], f32[256,128], f32[4,256,128], f32[4,256,128])) -> pred[] {
  %p = (s32[]{:T(128)}, f32[256,128]{1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %n = s32[]{:T(128)} constant(4)
  ROOT %lt = pred[]{:T(128)} compare(%i, %n), direction=LT
}

ENTRY %main (a: (s32[], f32[256,128], f32[4,256,128], f32[4,256,128]), v: f32[64]) -> f32[64] {
  %a = (s32[]{:T(128)}, f32[256,128]{1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}) parameter(0)
  %v = f32[64]{0:T(128)} parameter(1)
  %loop = (s32[]{:T(128)}, f32[256,128]{1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}, f32[4,256,128]{2,1,0:T(8,128)}) while(%a), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  ROOT %out = f32[64]{0:T(128)} copy(%v)
}
"""


def test_hbm_bytes_hand_count():
    layer = 256 * 128 * 4
    per_iteration = (layer + 4  # the weights' slice (and the index)
                     + 2 * layer  # x read, y written
                     + 2 * layer + 4  # y read, its slice of the buffer written (and the index)
                     + 3 * 4)  # the counter's add
    condition = 4 + 4 + 1  # compare: two s32 read, a pred written
    copy = 2 * 128 * 4
    assert aot.hbm_bytes(STACK) == 4 * (per_iteration + condition) + copy


def test_hbm_bytes_of_a_compiled_layer_stack():
    """8 layers of x <- tanh(x @ w[l]) under lax.scan, compiled for a v5e chip: the HBM count
    is at least the weights (each read once) and x read and written once, and at most that
    plus x read and written by every layer (whether XLA keeps it on chip or not; libtpu
    0.0.42.1 keeps it in VMEM: the lower bound and 100 bytes of loop counters)."""
    import jax
    import jax.numpy as jnp

    devices = aot.tpu_devices(tpu_chips.parse("v5e:2x2"))
    one = jax.sharding.SingleDeviceSharding(devices[0])
    layers, n = 8, 1024

    def stack(ws, x):
        return jax.lax.scan(lambda x, w: (jnp.tanh(x @ w), None), x, ws)[0]

    ws = jax.ShapeDtypeStruct((layers, n, n), jnp.bfloat16, sharding=one)
    x = jax.ShapeDtypeStruct((n, n), jnp.bfloat16, sharding=one)
    compiled = jax.jit(stack).lower(ws, x).compile()
    counted = aot.hbm_bytes(compiled.as_text())
    weights, act = layers * n * n * 2, n * n * 2
    assert weights + 2 * act <= counted <= weights + 2 * act + layers * 2 * act


def test_matmul_flops_of_padded_window_convolutions():
    """XLA:TPU writes some matmuls as convolutions whose window slides over padding: BERT's
    [B, S, H] x [H, N, D] projection as a size-12 window padded 11 each side over a
    size-1 input, one real tap an output; attention's batched matmul with the batch as a
    dilated spatial dimension, one tap an output."""
    projection = ("%c = bf16[32,128,12,64]{1,3,2,0} convolution(%a, %b), "
                  "window={size=1x12 pad=0_0x11_11 rhs_reversal=0x1}, "
                  "dim_labels=0bf1_1oi0->0b1f")
    assert aot._matmul_flops(projection, "convolution", "bf16[32,128,12,64]",
                             "bf16[32,128,768,1]", "bf16[12,64,768,1]") == \
        2 * 32 * 128 * 768 * 768
    scores = ("%c = bf16[32,12,128,128]{2,3,1,0} convolution(%a, %b), "
              "window={size=32x12 stride=31x11 lhs_dilate=32x12}, "
              "dim_labels=0b1f_0o1i->01bf")
    assert aot._matmul_flops(scores, "convolution", "bf16[32,12,128,128]",
                             "bf16[32,128,12,64]", "bf16[32,128,12,64]") == \
        2 * 32 * 12 * 128 * 128 * 64


def test_trip_count_of_a_loop_counting_by_two():
    """XLA's windowed (FSDP all-gather) matmul loops count by 2: `i < 8` stepping by 2 runs
    4 times, as STACK's known_trip_count of 4 says."""
    by_two = (STACK.replace(', backend_config={"known_trip_count":{"n":"4"}}', "")
              .replace("%n = s32[]{:T(128)} constant(4)", "%n = s32[]{:T(128)} constant(8)")
              .replace("%one = s32[]{:T(128)} constant(1)", "%one = s32[]{:T(128)} constant(2)"))
    assert by_two != STACK and aot.hbm_bytes(by_two) == aot.hbm_bytes(STACK)


# A loop whose first iteration XLA peeled out: the counter starts at 1 (a copied constant in
# the loop's initial tuple), so `i < 12` runs the body 11 times.
PEELED = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8] get-tuple-element(%p), index=1
  %one = s32[] constant(1)
  %i.1 = s32[] add(%i, %one)
  ROOT %t = (s32[], f32[8]) tuple(%i.1, %x)
}

%cond (p: (s32[], f32[8])) -> pred[] {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[8]) -> (s32[], f32[8]) {
  %x = f32[8] parameter(0)
  %start = s32[] constant(1)
  %counter = s32[] copy(%start)
  %init = (s32[], f32[8]) tuple(%counter, %x)
  ROOT %loop = (s32[], f32[8]) while(%init), condition=%cond, body=%body
}
"""


@pytest.mark.parametrize("start, runs", [(1, 11), (0, 12)])
def test_trip_count_of_a_peeled_loop(start, runs):
    hlo = PEELED.replace("constant(1)\n  %counter", f"constant({start})\n  %counter")
    comps, entry = aot._computations(hlo)
    assert aot._runs(comps, entry)["body"] == runs


def test_optimal_seconds_adds_back_the_concat_bitcasts():
    """From hidden 512 XLA:TPU prefetches weights in slices and re-joins them with
    ConcatBitcast custom calls, which its cost model scores at -1 s each (once per loop
    body, none in the non-finite skip's branch): added back, the estimate is positive."""
    r = aot.analyse(config_of("--config.model.hidden_size=512",
                              "--config.model.num_attention_heads=8"),
                    tpu_chips.parse("v5e:2x2"), with_eval=False)
    roof = r["roofline"]
    assert roof["concat_bitcasts"] >= 1 and roof["xla_optimal_seconds_per_call"] < 0
    assert 0 < roof["optimal_seconds_per_call"] < 1e-3
    assert roof["optimal_seconds_per_call"] == pytest.approx(
        roof["xla_optimal_seconds_per_call"] + roof["concat_bitcasts"])


def test_costed_concat_bitcasts_skip_conditional_branches():
    """Counted: the entry's and each loop body's (once, whatever its trip count); not a
    conditional branch's."""
    call = 'custom-call(%x), custom_call_target="ConcatBitcast"'
    hlo = PEELED.replace(
        "  %one = s32[] constant(1)\n",
        f"  %one = s32[] constant(1)\n  %j = f32[8] {call}\n").replace(
        "  %start = s32[]", f"  %k = f32[8] {call}\n  %i = s32[] constant(0)\n"
        "  %b = f32[8] conditional(%i, %x), branch_computations={%branch}\n"
        "  %start = s32[]") + (
        f"\n%branch (a: f32[8]) -> f32[8] {{\n  %a = f32[8] parameter(0)\n"
        f"  ROOT %c = f32[8] {call}\n}}\n")
    assert hlo.count("ConcatBitcast") == 3 and "branch" in aot._computations(hlo)[0]
    assert aot.costed_concat_bitcasts(hlo) == 2
