"""Peak memory of our train step with and without rematerialisation, and its loss.

For each `config.train.remat_policy` the jit'd train step (the real `jit_train_step`) is
compiled for one device and XLA's compiled memory analysis is read: peak = arguments
(state + batch) + temporaries (activations kept for the backward pass, gradients, ...).
One step is then run from the same initial state, batch and dropout key; the losses must
be equal (remat recomputes the same forward, dropout masks included).

    python -m benchmarks.memory --config small --seq 512 --batch 16
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import build_step, load_config, make_batch  # noqa: E402
from flax_bert import BertConfig  # noqa: E402

MIB = 2 ** 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="small",
                   choices=["tiny", "mini", "small", "medium", "base", "large"])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--masked-fraction", type=float, default=0.14)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--policies", default="none,dots_saveable,nothing_saveable",
                   help="Comma-separated config.train.remat_policy values; the first is the "
                        "reference.")
    return p.parse_args(argv)


def measure(args: argparse.Namespace, policy: str) -> tuple[float, float, float]:
    """(argument MiB, temporary MiB, loss after one step) for one remat policy."""
    config = load_config(args.config, [])
    config.train.dtype = args.dtype
    config.train.remat_policy = policy
    config.train.steps_per_call = 1  # one step (more per call add only their batches)
    cfg = BertConfig(**config.model.to_dict())
    preds = max(1, round(args.masked_fraction * args.seq))
    batch_np = make_batch(cfg, args.batch, args.seq, preds, np.random.default_rng(0))
    step, state, batch = build_step(config, batch_np, args.seq)
    rng = jax.random.PRNGKey(1)
    stats = step.lower(state, batch, rng).compile().memory_analysis()
    _, metrics = step(state, batch, rng)
    return (stats.argument_size_in_bytes / MIB, stats.temp_size_in_bytes / MIB,
            float(metrics["loss"][0]))


def main(args: argparse.Namespace) -> None:
    print(f"config {args.config}, seq {args.seq}, batch {args.batch}, dtype {args.dtype}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    ref_peak = ref_loss = None
    for policy in args.policies.split(","):
        arguments, temp, loss = measure(args, policy)
        peak = arguments + temp
        ref_peak = peak if ref_peak is None else ref_peak
        ref_loss = loss if ref_loss is None else ref_loss
        print(f"remat {policy:>16}: peak {peak:8.1f} MiB (arguments {arguments:7.1f} + temp "
              f"{temp:8.1f}), {peak / ref_peak:.2f}x of the first, loss {loss:.6f} "
              f"(diff {abs(loss - ref_loss):.1e})")


if __name__ == "__main__":
    main(parse_args())
