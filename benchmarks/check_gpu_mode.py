"""What the train-step benchmark's GPU mode does that can run on a CPU, checked: the FLOP
count, the HF step (bf16 autocast, fused AdamW) on the CPU and the trace parser.

    python -m benchmarks.check_gpu_mode      # one `ok NAME` line per check; exit 1 on a failure

(tests/e2e/test_benchmarks_gpu_mode.py runs it.)
"""

from __future__ import annotations

import sys
import tempfile
import traceback

import flax
import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import xla_trace
from benchmarks.common import load_config, make_batch, model_flops
from benchmarks.hf_step import hf_runner
from flax_bert import BertConfig, BertForPreTraining
from flax_bert.model import example_inputs

CFG = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=32)
SEQ = 16


def check_model_flops_are_six_per_matmul_parameter_and_token_plus_attention() -> None:
    params = jax.eval_shape(lambda: BertForPreTraining(CFG).init(
        jax.random.PRNGKey(0), *example_inputs(SEQ)))["params"]
    sizes = {k: int(np.prod(v.value.shape if hasattr(v, "value") else v.shape))
             for k, v in flax.traverse_util.flatten_dict(params, sep="/").items()}
    encoder = sum(n for k, n in sizes.items() if "/encoder/" in k and k.endswith("/kernel"))
    head = (sizes["cls/predictions/transform/dense/kernel"]
            + sizes["bert/embeddings/word_embeddings/embedding"])  # the tied decoder
    nsp = sizes["bert/pooler/dense/kernel"] + sizes["cls/seq_relationship/kernel"]
    batch, preds = 3, 5
    attention = 2 * 2 * SEQ * CFG.hidden_size * CFG.num_hidden_layers  # QK^T, probs @ V
    expected = 6 * (encoder * batch * SEQ + head * batch * preds + nsp * batch) \
        + 3 * attention * batch * SEQ
    assert model_flops(CFG, batch, SEQ, preds) == expected
    assert model_flops(CFG, batch, SEQ, preds, decoder_positions=SEQ) == \
        expected + 6 * head * batch * (SEQ - preds)
    # BERT-base, seq 128, batch 256, 18 masked: 17.8 TFLOP a step.
    base = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072)
    assert round(model_flops(base, 256, 128, 18) / 1e12, 1) == 17.8


def check_hf_step_under_bf16_autocast_and_fused_adamw_trains_like_float32() -> None:
    config = load_config("tiny", ["model.vocab_size=1100", "model.hidden_dropout_prob=0.0",
                                  "model.attention_probs_dropout_prob=0.0",
                                  "optimizer.learning_rate=0.003"])
    cfg = BertConfig(**config.model.to_dict())
    batch = make_batch(cfg, 2, 16, 3, np.random.default_rng(0))
    losses, threads = {}, torch.get_num_threads()
    try:  # one thread: torch's spinning OpenMP workers are slow on a loaded 2-core machine
        for name, kwargs in {"fp32": {}, "fused": {"fused_adamw": True},
                             "bf16": {"bf16_autocast": True, "fused_adamw": True}}.items():
            hf = hf_runner(config, batch, warmup=1, threads=1, **kwargs)
            first = hf.loss()
            hf.run(5)
            losses[name] = (first, hf.loss())
    finally:
        torch.set_num_threads(threads)
    fp32, fused, bf16 = losses["fp32"], losses["fused"], losses["bf16"]
    assert fp32[1] < fp32[0] - 0.1, fp32  # it trains
    np.testing.assert_allclose(fused, fp32, rtol=1e-5)
    np.testing.assert_allclose(bf16, fp32, rtol=3e-2)
    assert bf16 != fp32  # autocast did run in bfloat16


def check_top_ops_of_a_real_cpu_trace() -> None:
    w = jnp.asarray(np.random.default_rng(0).standard_normal((512, 512)), jnp.float32)
    f = jax.jit(lambda x: jnp.tanh(x @ w).sum())
    f(w).block_until_ready()
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            f(w).block_until_ready()
        ops, on_device = xla_trace.top_ops(xla_trace.load_events(trace_dir))
    assert not on_device and ops and all(op.total_us > 0 for op in ops)
    assert [op.total_us for op in ops] == sorted((op.total_us for op in ops), reverse=True)
    hlo = f.lower(w).compile().as_text()
    origins = [xla_trace.hlo_origin(op.hlo_op, hlo) for op in ops]
    # XLA:CPU may fuse the three into one op: each op names its HLO and JAX op
    assert all(shape and origin.rsplit("/", 1)[-1] in ("dot_general", "tanh", "reduce_sum")
               for shape, origin in origins), origins


def check_top_ops_of_a_gpu_trace_count_device_kernels_only() -> None:
    def x(pid, name, dur, hlo_op=None):
        return {"ph": "X", "pid": pid, "tid": 1, "ts": 0, "dur": dur, "name": name,
                "args": {"hlo_op": hlo_op, "hlo_module": "jit_step"} if hlo_op else {}}
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        x(1, "fusion.1", 500.0, "fusion.1"),  # the host's launch span: not GPU time
        x(7, "sm90_xmma_gemm_bf16", 50.0, "custom-call.3"),
        x(7, "sm90_xmma_gemm_bf16", 30.0, "custom-call.3"),
        x(7, "cutlass_splitk_reduce", 5.0, "custom-call.3"),
        x(7, "loop_add_fusion", 40.0, "fusion.1"),
        x(7, "MemcpyD2D", 1000.0),  # no HLO op
    ]
    ops, on_device = xla_trace.top_ops(events)
    assert on_device
    assert ops == [
        xla_trace.Op("custom-call.3", 85.0, ("sm90_xmma_gemm_bf16", "cutlass_splitk_reduce")),
        xla_trace.Op("fusion.1", 40.0, ("loop_add_fusion",))]
    hlo = ('  %custom-call.3 = (bf16[4096,3072]{1,0}, s8[0]{0}) custom-call(%a, %b), '
           'metadata={op_name="jit(step)/jvp(BertForPreTraining)/bert/encoder/dot_general"}')
    assert xla_trace.hlo_origin("custom-call.3", hlo) == (
        "(bf16[4096,3072]{1,0},", "jvp(BertForPreTraining)/bert/encoder/dot_general")
    assert xla_trace.hlo_origin("fusion.1", hlo) == ("", "")


CHECKS = [check_model_flops_are_six_per_matmul_parameter_and_token_plus_attention,
          check_hf_step_under_bf16_autocast_and_fused_adamw_trains_like_float32,
          check_top_ops_of_a_real_cpu_trace,
          check_top_ops_of_a_gpu_trace_count_device_kernels_only]


def main() -> int:
    failed = 0
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            check()
            print(f"ok {name}", flush=True)
        except Exception:  # noqa: BLE001  (each check's failure is reported, the rest run)
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
