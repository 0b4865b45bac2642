"""Seconds to lower and to compile our train step, and the size of its program.

The step is the trainer's: `trainer/step.jit_train_step` of the config's model, optimizer and
config.train.steps_per_call, on a 1-device mesh, lowered for abstract shapes (no parameter
is allocated) and compiled once, with the persistent compilation cache off. Prints the
StableHLO op count of the lowered program and the HLO instruction count of the compiled
one. Compile time on the CPU is a proxy for a GPU's: both grow with the program's size.
Before/after a change: run this file from each code tree.

    python -m benchmarks.compile_time --config base --seq 128
"""

from __future__ import annotations

import argparse
import re
import time

import jax
import numpy as np

from benchmarks.common import build_parts, load_config, make_batch
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import feed, step as steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="base",
                   choices=["tiny", "mini", "small", "medium", "base", "large", "default"])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--masked-fraction", type=float, default=0.14,
                   help="Fraction of positions labelled for MLM (P = round(f * seq)).")
    p.add_argument("--override", action="append", default=[],
                   help="config field=value, e.g. train.remat_policy=dots_saveable.")
    return p.parse_args(argv)


def count_ops(stablehlo: str, hlo: str) -> tuple[int, int]:
    """(StableHLO ops of the lowered module, HLO instructions of the compiled one)."""
    lowered = len(re.findall(r"^\s*(?:%[^=]*= )?\"?stablehlo\.", stablehlo, re.M))
    compiled = len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", hlo, re.M))
    return lowered, compiled


def main(args: argparse.Namespace) -> None:
    jax.config.update("jax_compilation_cache_dir", None)  # time a first compile
    config = load_config(args.config, args.override)
    preds = max(1, round(args.masked_fraction * args.seq))
    built = {}

    def build():  # the trainer's parts, traced only: the state stays abstract
        built["parts"] = build_parts(config, args.seq)
        return built["parts"].state

    start = time.perf_counter()
    state = jax.eval_shape(build)
    parts = built["parts"]
    step = steps.jit_train_step(parts.mesh, parts.shardings,
                                objective=PretrainingObjective(parts.model), tx=parts.tx,
                                schedule=parts.schedule)
    batch = make_batch(parts.model.config, args.batch, args.seq, preds,
                       np.random.default_rng(0))
    batches = feed.stack_batches([batch] * config.train.steps_per_call)  # [K, B, ...]
    traced, cpu0 = time.perf_counter(), time.process_time()
    lowered = step.lower(state, batches, jax.random.PRNGKey(1))
    lower_s, lower_cpu = time.perf_counter() - traced, time.process_time() - cpu0
    compiled = lowered.compile()
    compile_s = time.perf_counter() - traced - lower_s
    compile_cpu = time.process_time() - cpu0 - lower_cpu
    stablehlo_ops, hlo_ops = count_ops(lowered.as_text(), compiled.as_text())
    cfg = parts.model.config
    print(f"config {args.config} (L{cfg.num_hidden_layers}/H{cfg.hidden_size}), seq {args.seq}, "
          f"batch {args.batch}, {config.train.steps_per_call} steps per call, "
          f"remat {config.train.remat_policy}, {config.train.dtype}, {jax.devices()[0].platform}")
    print(f"build (abstract) {traced - start:.1f} s, lower {lower_s:.1f} s, "
          f"compile {compile_s:.1f} s (process CPU time: lower {lower_cpu:.1f} s, "
          f"compile {compile_cpu:.1f} s)")
    print(f"ops: {stablehlo_ops} StableHLO (lowered), {hlo_ops} HLO (compiled)")


if __name__ == "__main__":
    main(parse_args())
