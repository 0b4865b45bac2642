"""Train-step speed: our jit'd step vs Hugging Face PyTorch `BertForPreTraining`, one run.

On the CPU (the default where there is no /dev/nvidia*): both run the same model size,
batch, sequence length and number of masked positions, on the same number of threads,
after warm-up; each is timed over several repeats of a few
steps and the median is reported. Prints tokens/s for each, `ratio ours/hf: X.XXx`, and
our model FLOP/s as a fraction of a jit'd fp32 matmul's FLOP/s measured in this run.
Our steps run as training runs them: config.train.steps_per_call optimizer steps per jit'd
call (`--override train.steps_per_call=1` times one step per call).

FLOPs counted (what our step computes; forward + backward = 3 x forward, 2 per MAC):
  encoder   6 * (4 H^2 + 2 H I) * L * B * S            (Q, K, V, output, FFN matmuls)
  attention 6 * 2 * S * H * L * B * S                  (QK^T scores and probs @ V)
  MLM head  6 * (H^2 + H V) * B * P                    (transform + decoder, P masked)
  pooler/NSP 6 * (H^2 + 2 H) * B
Embedding gathers, LayerNorm, GELU, softmax, dropout and the optimizer are not counted.
HF computes the decoder at all S positions; its FLOPs are printed for reference.

On a GPU (`--platform gpu`): both run on the GPU in one process, ours in the config's
dtype (`--dtype` overrides it), HF under bfloat16 autocast with fused AdamW and SDPA
attention (`--hf-compile` adds a `torch.compile` run as a second baseline). Prints
tokens/s, sequences/s, the ratios, the seconds for build + first compile, and MFU against
the GPU's datasheet dense bf16 peak (`--peak-tflops` for a GPU not in the table) and
against a bf16 matmul timed in the same run.

    python -m benchmarks.train_step --config small --seq 128 --batch 32
    python -m benchmarks.train_step --platform gpu --config base --batch 256 --dtype bfloat16 \
        --hf-compile --top-ops 15
"""

from __future__ import annotations

import argparse
import gc
import glob
import os
import sys
import tempfile
import time
from typing import Callable

# Datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by jax's device_kind.
DATASHEET_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM
    "NVIDIA H200": 989.0,  # H200 SXM
}
# Of the GPU's memory, the share JAX takes up front (it preallocates 75% by default);
# HF's PyTorch step, timed after ours in the same process, needs the rest.
JAX_GPU_MEMORY_FRACTION = "0.45"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="small",
                   choices=["tiny", "mini", "small", "medium", "base", "large", "default"],
                   help="A size file, or `default` (the default run's L2/H128/A2; its vocab "
                        "comes from the data: add --override model.vocab_size=8192).")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--masked-fraction", type=float, default=0.14,
                   help="Fraction of positions labelled for MLM (P = round(f * seq)).")
    p.add_argument("--platform", choices=["cpu", "gpu"],
                   default="gpu" if glob.glob("/dev/nvidia[0-9]*") else "cpu",
                   help="Where both sides run (default: gpu where /dev/nvidia* exists).")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="Our compute dtype (default: the config's train.dtype). HF runs "
                        "float32 on the CPU, bfloat16 autocast on a GPU.")
    p.add_argument("--steps", type=int, default=3, help="Steps per timed repeat.")
    p.add_argument("--repeats", type=int, default=3, help="Timed repeats (median).")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    p.add_argument("--threads", type=int, default=0,
                   help="Threads for both frameworks (0 = all cores available).")
    p.add_argument("--matmul-size", type=int, default=0,
                   help="N of the N x N x N matmul that measures peak FLOP/s (fp32 on the "
                        "CPU, bf16 on a GPU; default 2048 on the CPU, 8192 on a GPU).")
    p.add_argument("--skip-hf", action="store_true", help="Only time our step.")
    p.add_argument("--top-ops", type=int, default=0,
                   help="Also trace one of our steps (jax.profiler) and print its N most "
                        "expensive XLA ops (CPU: thunks, independent ones may overlap; "
                        "GPU: kernels, with the HLO op and JAX op each came from).")
    p.add_argument("--hf-compile", action="store_true",
                   help="GPU: also time HF under torch.compile, a second baseline.")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="GPU: the dense bf16 peak for MFU, for a GPU not in the table "
                        f"({', '.join(DATASHEET_BF16_TFLOPS)}).")
    p.add_argument("--breakdown", action="store_true",
                   help="Also time our step's parts: forward, forward + backward, optimizer.")
    p.add_argument("--override", action="append", default=[],
                   help="config field=value, e.g. train.remat_policy=dots_saveable.")
    args = p.parse_args(argv)
    args.matmul_size = args.matmul_size or (8192 if args.platform == "gpu" else 2048)
    if args.peak_tflops < 0:
        p.error("--peak-tflops must be > 0")
    if args.platform == "cpu" and (args.hf_compile or args.peak_tflops):
        p.error("--hf-compile and --peak-tflops are for --platform gpu")
    return args


ARGS = parse_args()
MATMUL_CALLS = 5  # Matmul calls per timed repeat of the peak measurement.
THREADS = ARGS.threads or len(os.sched_getaffinity(0))
if THREADS < len(os.sched_getaffinity(0)):
    # Pin the process, so XLA's thread pool (sized from the CPUs it may use) and torch agree.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:THREADS])
os.environ.setdefault("JAX_PLATFORMS", "cuda" if ARGS.platform == "gpu" else "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", JAX_GPU_MEMORY_FRACTION)
# torch's OpenMP workers otherwise busy-wait after each parallel region and take the cores
# from XLA's threads when the two frameworks alternate in one process (ours measured
# 2.94 s/step beside spinning workers vs 2.70 with them asleep; HF's own step 4.45 vs 4.34).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
if ARGS.platform == "cpu":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_cpu_multi_thread_eigen={str(THREADS > 1).lower()}"
                               + f" intra_op_parallelism_threads={THREADS}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import (build_parts, build_step, load_config, make_batch,  # noqa: E402
                               model_flops)
from benchmarks.hf_step import hf_runner  # noqa: E402
from benchmarks import xla_trace  # noqa: E402
from flax_bert import BertConfig  # noqa: E402
from flax_bert import losses  # noqa: E402
from flax_bert.trainer import sharding  # noqa: E402


def time_repeats(run_steps: Callable[[int], int], steps_per_repeat: int,
                 repeats: int) -> list[float]:
    """Seconds per step for each repeat; `run_steps(n)` runs at least n steps, blocks until
    they are done and returns how many it ran."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ran = run_steps(steps_per_repeat)
        times.append((time.perf_counter() - start) / ran)
    return times


def matmul_runner(n: int, dtype: jnp.dtype = jnp.float32) -> Callable[[int], int]:
    """Runs a jit'd n x n x n matmul k times (2 n^3 FLOPs each) on random data, warmed up."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()

    def run(k: int) -> int:
        out = None
        for _ in range(k):
            out = f(a, a)
        out.block_until_ready()
        return k

    return run


def ours_runner(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
                args: argparse.Namespace
                ) -> tuple[Callable[[int], int], Callable[[], float], Callable[[], str],
                           tuple[float, float, int]]:
    """(run n steps, last loss, compiled HLO text, (seconds to build, seconds of the
    warm-up calls, which compile, their steps)) of steps.jit_train_step on a 1-device
    mesh, warmed up. Steps run in calls of config.train.steps_per_call, as training runs
    them; n is rounded up to whole calls."""
    start = time.perf_counter()
    step, state, batches = build_step(config, batch_np, args.seq)
    jax.block_until_ready(state)
    built = time.perf_counter()
    per_call = config.train.steps_per_call
    rng = jax.random.PRNGKey(1)
    holder = {"state": state, "metrics": None}

    def run(n: int) -> int:
        calls = -(-n // per_call)
        for _ in range(calls):  # dispatch is asynchronous: no host sync inside the loop
            holder["state"], holder["metrics"] = step(holder["state"], batches, rng)
        jax.block_until_ready(holder["state"])
        return calls * per_call

    warm_steps = run(args.warmup)
    setup_s = (built - start, time.perf_counter() - built, warm_steps)
    hlo = lambda: step.lower(holder["state"], batches, rng).compile().as_text()  # noqa: E731
    return run, lambda: float(holder["metrics"]["loss"][-1]), hlo, setup_s


def part_runners(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
                 args: argparse.Namespace) -> dict[str, Callable[[int], int]]:
    """Runners for the parts of our step, each jit'd alone: forward (loss), forward +
    backward (value_and_grad), and the optimizer (clip + AdamW + apply) on given grads."""
    parts = build_parts(config, args.seq)
    batch = jax.device_put(batch_np, sharding.batch_sharding(parts.mesh))
    params, opt_state, key = parts.state.params, parts.state.opt_state, jax.random.PRNGKey(1)

    def loss_fn(p):
        sums = losses.pretraining_sums(parts.model, p, batch, deterministic=False,
                                       dropout_rng=key)
        return sums["mlm_loss_sum"] + sums["nsp_loss_sum"]

    def update(grads, opt_state, params):
        updates, opt_state = parts.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    fns = {"forward": (jax.jit(loss_fn), (params,)),
           "forward+backward": (jax.jit(jax.value_and_grad(loss_fn)), (params,))}
    grads = fns["forward+backward"][0](params)[1]
    fns["optimizer"] = (jax.jit(update), (grads, opt_state, params))

    def runner(fn, fn_args):
        def run(n: int) -> int:
            jax.block_until_ready([fn(*fn_args) for _ in range(n)])
            return n
        run(args.warmup)
        return run

    return {name: runner(fn, fn_args) for name, (fn, fn_args) in fns.items()}


def print_top_ops(run: Callable[[int], int], top: int, hlo_text: str, gpu: bool) -> None:
    """Traces one call with jax.profiler and prints the `top` XLA ops by total time per
    step, each with the JAX operation it came from (HLO metadata); on a GPU, the kernels'
    time, with the most expensive kernel of each op."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            ran = run(1)
        events = xla_trace.load_events(trace_dir)
    ops, on_device = xla_trace.top_ops(events)
    if gpu and not on_device:
        print(f"warning: the trace has no GPU timeline (its processes: "
              f"{sorted(set(xla_trace.process_names(events).values()))}); host events below")
    if on_device:
        busy_ms = sum(op.total_us for op in ops) / 1e3 / ran
        print(f"top {top} XLA ops by GPU kernel time (ms per step, over a call of {ran}; "
              f"all kernels: {busy_ms:.1f} ms per step):")
    else:
        print(f"top {top} XLA ops (ms of thunk time per step, over a call of {ran}):")
    for op in ops[:top]:
        shape, origin = xla_trace.hlo_origin(op.hlo_op, hlo_text)
        line = f"  {op.total_us / 1e3 / ran:8.1f}  {op.hlo_op:<26} {shape:<22} {origin[-90:]}"
        if on_device:
            line += f"  [{op.kernels[0][:60]}{' +' if len(op.kernels) > 1 else ''}]"
        print(line)


def interleaved_medians(runners: dict[str, Callable[[int], int]], repeats: int,
                        steps: int) -> dict[str, float]:
    """Median seconds per step (per call for "matmul") of each runner; the repeats are
    interleaved (a, b, c, a, b, c, ...), so that load from other processes hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name] += time_repeats(run, MATMUL_CALLS if name == "matmul" else steps, 1)
    return {name: float(np.median(t)) for name, t in times.items()}


def gpu_rates(name: str, s_step: float, tokens: int, sequences: int, loss: float,
              flops: float, peak: float, datasheet: float) -> str:
    """One GPU result line: time, throughput, MFU against the datasheet and the matmul."""
    return (f"{name}: {s_step * 1e3:.1f} ms/step, {tokens / s_step:,.0f} tokens/s, "
            f"{sequences / s_step:,.0f} sequences/s, loss {loss:.3f}, "
            f"{flops / 1e12:.2f} TFLOP/step, {flops / s_step / 1e12:.1f} TFLOP/s = "
            f"MFU {flops / s_step / datasheet:.1%} of datasheet, "
            f"{flops / s_step / peak:.1%} of matmul peak")


def measure_ours(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
                 args: argparse.Namespace, matmul: Callable[[int], int],
                 flops: float, tokens: int, datasheet: float) -> tuple[float, float]:
    """Times (and prints) our step, and its parts and top ops if asked; returns (s/step,
    matmul peak FLOP/s). `datasheet`: the GPU's peak FLOP/s (0 on the CPU). Everything it
    builds is garbage once it returns."""
    ours_run, ours_loss, ours_hlo, (build_s, first_s, first_steps) = ours_runner(
        config, batch_np, args)
    runners = {"matmul": matmul, "ours": ours_run}
    if args.breakdown:
        runners.update(part_runners(config, batch_np, args))
    s_per = interleaved_medians(runners, args.repeats, args.steps)
    peak = 2.0 * args.matmul_size ** 3 / s_per["matmul"]
    ours_s = s_per["ours"]
    if datasheet:
        print(f"matmul peak ({args.matmul_size}^3 bf16, jit): {peak / 1e12:.1f} TFLOP/s = "
              f"{peak / datasheet:.0%} of the datasheet's {datasheet / 1e12:.0f}")
        print(f"ours: build {build_s:.1f} s + first {first_steps} steps {first_s:.1f} s "
              f"(compile + run)")
        print(gpu_rates("ours", ours_s, tokens, args.batch, ours_loss(), flops, peak, datasheet))
    else:
        print(f"matmul peak ({args.matmul_size}^3 fp32, jit): {peak / 1e9:.1f} GFLOP/s")
        print(f"ours: {ours_s:.3f} s/step, {tokens / ours_s:,.0f} tokens/s, "
              f"loss {ours_loss():.3f}, {flops / 1e9:.1f} GFLOP/step, "
              f"{flops / ours_s / 1e9:.1f} GFLOP/s = {flops / ours_s / peak:.0%} of matmul peak")
    if args.breakdown:
        # FLOPs per part: forward = 1/3 of the step's (backward = 2 x forward).
        part_flops = {"forward": flops / 3, "forward+backward": flops, "optimizer": 0.0}
        for name, part_flop in part_flops.items():
            t = s_per[name]
            print(f"  part {name:<17} {t:.3f} s = {t / ours_s:4.0%} of the step"
                  + (f", {part_flop / t / peak:.0%} of matmul peak" if part_flop else ""))
        backward = s_per["forward+backward"] - s_per["forward"]
        print(f"  part {'backward':<17} {backward:.3f} s = {backward / ours_s:4.0%} of the step, "
              f"{2 * flops / 3 / backward / peak:.0%} of matmul peak "
              f"({backward / s_per['forward']:.2f}x the forward)")
    if args.top_ops:
        print_top_ops(ours_run, args.top_ops, ours_hlo(), gpu=bool(datasheet))
    return ours_s, peak


def fail(message: str) -> None:
    """Prints `error: message` as one line and exits 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def datasheet_flops(args: argparse.Namespace) -> float:
    """The GPU's dense bf16 peak FLOP/s: --peak-tflops, else the table's; 0 on the CPU.
    Exits with one error line for a GPU the table lacks (no silent guess)."""
    if args.platform == "cpu":
        return 0.0
    kind = jax.devices()[0].device_kind
    tflops = args.peak_tflops or DATASHEET_BF16_TFLOPS.get(kind)
    if not tflops:
        fail(f"no datasheet bf16 peak for GPU {kind!r}; pass --peak-tflops (its dense "
             f"bf16 TFLOP/s, no sparsity)")
    return tflops * 1e12


def time_hf(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
            args: argparse.Namespace, compile_model: bool = False) -> tuple[float, float]:
    """(median s/step, last loss) of HF's step; on a GPU under bf16 autocast with fused
    AdamW (`compile_model`: torch.compile), its first-call seconds printed."""
    gpu = args.platform == "gpu"
    hf = hf_runner(config, batch_np, args.warmup, device="cuda" if gpu else "cpu",
                   threads=THREADS, bf16_autocast=gpu, fused_adamw=gpu,
                   compile_model=compile_model)
    if gpu:
        print(f"hf {'compile' if compile_model else 'eager'}: first {args.warmup} steps "
              f"{hf.first_call_s:.1f} s")
    hf_s = float(np.median(time_repeats(hf.run, args.steps, args.repeats)))
    loss = hf.loss()
    del hf
    gc.collect()
    if gpu:
        import torch
        torch.cuda.empty_cache()
    return hf_s, loss


def main(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.override)
    config.train.dtype = args.dtype or config.train.dtype
    cfg = BertConfig(**config.model.to_dict())
    preds = max(1, round(args.masked_fraction * args.seq))
    batch_np = make_batch(cfg, args.batch, args.seq, preds, np.random.default_rng(0))
    tokens = args.batch * args.seq
    try:  # JAX_PLATFORMS=cuda without a GPU: RuntimeError, or without jax's CUDA plugin,
        device = jax.devices()[0]  # an AssertionError (jax 0.10)
    except (RuntimeError, AssertionError) as e:
        fail(f"no {args.platform} device for jax ({' '.join(str(e).split())[:200]}); "
             f"run with --platform cpu, or install jax for the GPU")
    if device.platform != args.platform:
        fail(f"--platform {args.platform} but jax runs on {device.platform} "
             f"(JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')})")
    print(f"config {args.config} (L{cfg.num_hidden_layers}/H{cfg.hidden_size}/"
          f"A{cfg.num_attention_heads}), seq {args.seq}, batch {args.batch}, "
          f"masked {preds}/{args.seq}, dtype {config.train.dtype}, threads {THREADS}, "
          f"{config.train.steps_per_call} steps per call (ours), "
          f"jax {jax.__version__} on {device.platform}"
          + (f" ({device.device_kind})" if args.platform == "gpu" else ""))
    datasheet = datasheet_flops(args)
    matmul = matmul_runner(args.matmul_size, jnp.bfloat16 if datasheet else jnp.float32)
    flops = model_flops(cfg, args.batch, args.seq, preds)
    ours_s, peak = measure_ours(config, batch_np, args, matmul, flops, tokens, datasheet)
    if args.skip_hf:
        return
    # HF runs alone, after our step, its state and compiled programs are released. HF
    # allocates and frees ~2.6 GB of fresh pages per step; with 1.6 GB of JAX buffers
    # held its page faults took 2x the system time (5.3 vs 3.8 s/step), and interleaved
    # with our step or the matmul it read 4.5-5.2 s/step against 3.8-4.0 alone.
    del matmul
    gc.collect()
    jax.clear_caches()
    hf_flops = model_flops(cfg, args.batch, args.seq, preds, decoder_positions=args.seq)
    hf_s, hf_loss = time_hf(config, batch_np, args)
    if not datasheet:
        print(f"hf:   {hf_s:.3f} s/step, {tokens / hf_s:,.0f} tokens/s, loss {hf_loss:.3f}, "
              f"{hf_flops / 1e9:.1f} GFLOP/step (full-vocab decoder at all {args.seq} "
              f"positions), {hf_flops / hf_s / 1e9:.1f} GFLOP/s = "
              f"{hf_flops / hf_s / peak:.0%} of matmul peak")
        print(f"ratio ours/hf: {hf_s / ours_s:.2f}x")
        return
    print(gpu_rates("hf eager", hf_s, tokens, args.batch, hf_loss, hf_flops, peak, datasheet)
          + f" (HF's FLOPs: full-vocab decoder at all {args.seq} positions)")
    print(f"ratio ours/hf eager: {hf_s / ours_s:.2f}x")
    if args.hf_compile:
        hf_s, hf_loss = time_hf(config, batch_np, args, compile_model=True)
        print(gpu_rates("hf compile", hf_s, tokens, args.batch, hf_loss, hf_flops, peak,
                        datasheet))
        print(f"ratio ours/hf compile: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
    main(ARGS)
