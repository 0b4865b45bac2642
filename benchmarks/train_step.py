"""Train-step speed: our jit'd step vs Hugging Face PyTorch `BertForPreTraining`, one run.

Both run the same model size, batch, sequence length and number of masked positions, on
the same number of threads, after warm-up; each is timed over several repeats of a few
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

    python benchmarks/train_step.py --config small --seq 128 --batch 32
"""

from __future__ import annotations

import argparse
import collections
import gc
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="small",
                   choices=["tiny", "mini", "small", "medium", "base", "large"])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--masked-fraction", type=float, default=0.14,
                   help="Fraction of positions labelled for MLM (P = round(f * seq)).")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="Our compute dtype (HF always runs float32).")
    p.add_argument("--steps", type=int, default=3, help="Steps per timed repeat.")
    p.add_argument("--repeats", type=int, default=3, help="Timed repeats (median).")
    p.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    p.add_argument("--threads", type=int, default=0,
                   help="Threads for both frameworks (0 = all cores available).")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="N of the N x N x N fp32 matmul that measures peak FLOP/s.")
    p.add_argument("--skip-hf", action="store_true", help="Only time our step.")
    p.add_argument("--top-ops", type=int, default=0,
                   help="Also trace one of our steps (jax.profiler) and print its N most "
                        "expensive XLA ops (thunks; independent ones may overlap).")
    p.add_argument("--breakdown", action="store_true",
                   help="Also time our step's parts: forward, forward + backward, optimizer.")
    p.add_argument("--override", action="append", default=[],
                   help="config field=value, e.g. train.remat_policy=dots_saveable.")
    return p.parse_args(argv)


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root
ARGS = parse_args()
MATMUL_CALLS = 5  # Matmul calls per timed repeat of the peak measurement.
THREADS = ARGS.threads or len(os.sched_getaffinity(0))
if THREADS < len(os.sched_getaffinity(0)):
    # Pin the process, so XLA's thread pool (sized from the CPUs it may use) and torch agree.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:THREADS])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# torch's OpenMP workers otherwise busy-wait after each parallel region and take the cores
# from XLA's threads when the two frameworks alternate in one process (ours measured
# 2.94 s/step beside spinning workers vs 2.70 with them asleep; HF's own step 4.45 vs 4.34).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_cpu_multi_thread_eigen={str(THREADS > 1).lower()}"
                           + f" intra_op_parallelism_threads={THREADS}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.common import build_parts, build_step, load_config, make_batch  # noqa: E402
from flax_bert import BertConfig  # noqa: E402
from flax_bert.training import sharding, steps  # noqa: E402


def model_flops(cfg: BertConfig, batch: int, seq: int, preds: int,
                decoder_positions: int | None = None) -> float:
    """FLOPs of one train step (forward + backward) as counted in the module docstring."""
    h, i, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    tokens = batch * seq
    encoder = 6 * (4 * h * h + 2 * h * i) * layers * tokens
    attention = 6 * 2 * seq * h * layers * tokens
    head_tokens = batch * (preds if decoder_positions is None else decoder_positions)
    mlm = 6 * (h * h + h * v) * head_tokens
    nsp = 6 * (h * h + 2 * h) * batch
    return float(encoder + attention + mlm + nsp)


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


def matmul_runner(n: int) -> Callable[[int], int]:
    """Runs a jit'd fp32 n x n x n matmul k times (2 n^3 FLOPs each), warmed up."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
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
                ) -> tuple[Callable[[int], int], Callable[[], float], Callable[[], str]]:
    """(run n steps, last loss, compiled HLO text) of steps.jit_train_step on a 1-device
    mesh, warmed up. Steps run in calls of config.train.steps_per_call, as training runs
    them; n is rounded up to whole calls."""
    step, state, batches = build_step(config, batch_np, args.seq)
    per_call = config.train.steps_per_call
    rng = jax.random.PRNGKey(1)
    holder = {"state": state, "metrics": None}

    def run(n: int) -> int:
        calls = -(-n // per_call)
        for _ in range(calls):  # dispatch is asynchronous: no host sync inside the loop
            holder["state"], holder["metrics"] = step(holder["state"], batches, rng)
        jax.block_until_ready(holder["state"])
        return calls * per_call

    run(args.warmup)
    hlo = lambda: step.lower(holder["state"], batches, rng).compile().as_text()  # noqa: E731
    return run, lambda: float(holder["metrics"]["loss"][-1]), hlo


def part_runners(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
                 args: argparse.Namespace) -> dict[str, Callable[[int], int]]:
    """Runners for the parts of our step, each jit'd alone: forward (loss), forward +
    backward (value_and_grad), and the optimizer (clip + AdamW + apply) on given grads."""
    parts = build_parts(config, args.seq)
    batch = jax.device_put(batch_np, sharding.batch_sharding(parts.mesh))
    params, opt_state, key = parts.state.params, parts.state.opt_state, jax.random.PRNGKey(1)

    def loss_fn(p):
        sums = steps.forward_sums(parts.model, p, batch, deterministic=False, dropout_rng=key)
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


def print_top_ops(run: Callable[[int], int], top: int, hlo_text: str) -> None:
    """Traces one call with jax.profiler and prints the `top` XLA ops by total time per
    step, each with the JAX operation it came from (HLO metadata)."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            ran = run(1)
        path, = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                          recursive=True)
        with gzip.open(path) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total_us = collections.Counter()
    for e in events:  # XLA:CPU thunks; the executor's and Python's own spans are skipped
        name = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and re.fullmatch(r"[\w.-]+", name):
            total_us[name] += e["dur"]
    print(f"top {top} XLA ops (ms of thunk time per step, over a call of {ran}):")
    for name, us in total_us.most_common(top):
        m = re.search(rf"%{re.escape(name)} = (\S+) .*?op_name=\"([^\"]*)\"", hlo_text)
        shape, origin = (m.group(1), m.group(2).split(")/", 1)[-1]) if m else ("", "")
        print(f"  {us / 1e3 / ran:8.1f}  {name:<26} {shape:<22} {origin[-90:]}")


def hf_runner(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
              args: argparse.Namespace) -> tuple[Callable[[int], int], Callable[[], float]]:
    """(run n steps, last loss) of HF BertForPreTraining + AdamW + clip_grad_norm_, warmed
    up."""
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    opt = config.optimizer
    hf_config = transformers.BertConfig(**config.model.to_dict())
    model = transformers.BertForPreTraining(hf_config).train()
    adamw = torch.optim.AdamW(model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                              eps=opt.eps, weight_decay=opt.weight_decay)
    labels = np.full(batch_np["input_ids"].shape, -100, np.int64)  # [B, S]
    np.put_along_axis(labels, batch_np["masked_positions"], batch_np["masked_ids"], axis=1)
    inputs = {
        "input_ids": torch.from_numpy(batch_np["input_ids"].astype(np.int64)),
        "token_type_ids": torch.from_numpy(batch_np["token_type_ids"].astype(np.int64)),
        "attention_mask": torch.from_numpy(batch_np["attention_mask"].astype(np.int64)),
        "labels": torch.from_numpy(labels),
        "next_sentence_label": torch.from_numpy(batch_np["next_sentence_label"].astype(np.int64)),
    }
    loss_value = [0.0]

    def run(n: int) -> int:
        for _ in range(n):
            adamw.zero_grad(set_to_none=True)
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
            adamw.step()
            loss_value[0] = float(loss.detach())
        return n

    run(args.warmup)
    return run, lambda: loss_value[0]


def interleaved_medians(runners: dict[str, Callable[[int], int]], repeats: int,
                        steps: int) -> dict[str, float]:
    """Median seconds per step (per call for "matmul") of each runner; the repeats are
    interleaved (a, b, c, a, b, c, ...), so that load from other processes hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name] += time_repeats(run, MATMUL_CALLS if name == "matmul" else steps, 1)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure_ours(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
                 args: argparse.Namespace, matmul: Callable[[int], int],
                 flops: float, tokens: int) -> tuple[float, float]:
    """Times (and prints) our step, and its parts and top ops if asked; returns (s/step,
    matmul peak FLOP/s). Everything it builds is garbage once it returns."""
    ours_run, ours_loss, ours_hlo = ours_runner(config, batch_np, args)
    runners = {"matmul": matmul, "ours": ours_run}
    if args.breakdown:
        runners.update(part_runners(config, batch_np, args))
    s_per = interleaved_medians(runners, args.repeats, args.steps)
    peak = 2.0 * args.matmul_size ** 3 / s_per["matmul"]
    print(f"matmul peak ({args.matmul_size}^3 fp32, jit): {peak / 1e9:.1f} GFLOP/s")
    ours_s = s_per["ours"]
    print(f"ours: {ours_s:.3f} s/step, {tokens / ours_s:,.0f} tokens/s, loss {ours_loss():.3f}, "
          f"{flops / 1e9:.1f} GFLOP/step, {flops / ours_s / 1e9:.1f} GFLOP/s = "
          f"{flops / ours_s / peak:.0%} of matmul peak")
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
        print_top_ops(ours_run, args.top_ops, ours_hlo())
    return ours_s, peak


def main(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.override)
    config.train.dtype = args.dtype
    cfg = BertConfig(**config.model.to_dict())
    preds = max(1, round(args.masked_fraction * args.seq))
    batch_np = make_batch(cfg, args.batch, args.seq, preds, np.random.default_rng(0))
    tokens = args.batch * args.seq
    print(f"config {args.config} (L{cfg.num_hidden_layers}/H{cfg.hidden_size}/"
          f"A{cfg.num_attention_heads}), seq {args.seq}, batch {args.batch}, "
          f"masked {preds}/{args.seq}, dtype {args.dtype}, threads {THREADS}, "
          f"{config.train.steps_per_call} steps per call (ours), "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    matmul = matmul_runner(args.matmul_size)
    flops = model_flops(cfg, args.batch, args.seq, preds)
    ours_s, peak = measure_ours(config, batch_np, args, matmul, flops, tokens)
    if args.skip_hf:
        return
    # HF runs alone, after our step, its state and compiled programs are released. HF
    # allocates and frees ~2.6 GB of fresh pages per step; with 1.6 GB of JAX buffers
    # held its page faults took 2x the system time (5.3 vs 3.8 s/step), and interleaved
    # with our step or the matmul it read 4.5-5.2 s/step against 3.8-4.0 alone.
    gc.collect()
    jax.clear_caches()
    hf_run, hf_loss = hf_runner(config, batch_np, args)
    hf_s = float(np.median(time_repeats(hf_run, args.steps, args.repeats)))
    hf_flops = model_flops(cfg, args.batch, args.seq, preds, decoder_positions=args.seq)
    print(f"hf:   {hf_s:.3f} s/step, {tokens / hf_s:,.0f} tokens/s, loss {hf_loss():.3f}, "
          f"{hf_flops / 1e9:.1f} GFLOP/step (full-vocab decoder at all {args.seq} positions), "
          f"{hf_flops / hf_s / 1e9:.1f} GFLOP/s = {hf_flops / hf_s / peak:.0%} of matmul peak")
    print(f"ratio ours/hf: {hf_s / ours_s:.2f}x")


if __name__ == "__main__":
    main(ARGS)
