"""The TPU readiness table of benchmarks/README.md: each size file compiled for TPU slices
with flax_bert.aot (no TPU needed), at the best mesh and remat policy its bound finds and
the largest rows a chip that fits them.

    python -m benchmarks.aot_table --sizes base,large --seqs 128,512 \
        --topologies v5e-16,v5p-8 --json /tmp/aot_table.json

Each row is a size file as it trains (packed; bf16; BERT's 30522-token vocab; one phase at
`seq` tokens, `max_predictions_per_seq` 20 at 128 and 80 at 512), searched in three steps:
1. data parallel (data over every chip), no remat: rows a chip start at --max-rows (512
   at 128 tokens, 128 at 512) and halve until the train step fits the chip's HBM (a step
   that does not fit is refused in seconds); R is the largest that fits (with remat
   nothing_saveable if none does);
2. at R rows a chip, data parallel with remat dots_saveable, and FSDP and data x tensor 2
   with dots_saveable, are compiled and ranked by the tokens/s
   their bound allows (`aot.search`), with step 1's;
3. the winner's rows double from R while it fits, up to --max-rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from flax_bert import aot, run_config, tpu_chips

REMATS = ("none", "dots_saveable")
FALLBACK_REMAT = "nothing_saveable"


def meshes(devices: int) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor): all data; all FSDP; data x tensor 2."""
    return [(devices, 1, 1), (1, devices, 1), (devices // 2, 1, 2)]


def size_config(size: str, seq: int) -> Any:
    return run_config.load([
        f"--config=configs/{size}.py", f"--config.data.max_seq_length={seq}",
        f"--config.data.max_predictions_per_seq={20 if seq <= 128 else 80}",
        "--config.train.phase1_fraction=0", "--config.train.dtype=bfloat16",
        "--config.model.vocab_size=30522"], "aot_table")


def compile_at(config: Any, topology: tpu_chips.Topology, devices: list,
               mesh: tuple[int, int, int], rows: int, remat: str, say: Callable) -> dict:
    """The aot report of `config`'s train step at `mesh`, `rows` a device and `remat`
    (one that does not fit if the config refuses that mesh)."""
    reports = aot.search(config, topology, 1, 2, [mesh], [rows], [remat], say=say)
    return reports[0] if reports else {"memory": {"fits": False}}


def largest_fit(trial: Callable[[int], dict], start: int, most: int) -> dict | None:
    """Doubles (or halves) the rows a chip from `start` until `trial(rows)` stops (starts)
    fitting; the report of the largest that fits, or None."""
    tried: dict[int, dict] = {}

    def fits(rows: int) -> bool:
        if rows not in tried:
            tried[rows] = trial(rows)
        return tried[rows]["memory"]["fits"]

    rows = start
    if fits(rows):
        while 2 * rows <= most and fits(2 * rows):
            rows *= 2
    else:
        while rows > 1 and not fits(rows // 2):
            rows //= 2
        rows //= 2
        if not rows:
            return None
    return tried[rows]


def best_row(size: str, seq: int, topology: tpu_chips.Topology, devices: list, most: int,
             say: Callable = print) -> dict | None:
    """The three steps of the module docstring for one size, seq and slice."""
    config = size_config(size, seq)
    n = len(devices)
    data = (n, 1, 1)
    first = None
    for remat in ("none", FALLBACK_REMAT):
        first = largest_fit(
            lambda rows: compile_at(config, topology, devices, data, rows, remat, say),
            most, most)
        if first is not None:
            break
    if first is None:
        return None
    rows = int(first["rows_per_device"])
    remats = REMATS if first["remat_policy"] == "none" else (FALLBACK_REMAT,)
    others = [(m, r) for m in meshes(n) for r in remats
              if (m, r) != (data, first["remat_policy"]) and (m == data or r != "none")]
    ranked = [first] + [compile_at(config, topology, devices, m, rows, r, say)
                        for m, r in others]
    ranked = sorted((r for r in ranked if r["memory"]["fits"]),
                    key=lambda r: -r["roofline"]["tokens_per_s"])
    best = ranked[0]
    mesh = (best["mesh"]["data"], best["mesh"]["fsdp"], best["mesh"]["tensor"])
    if best is not first and 2 * rows <= most:
        best = largest_fit(
            lambda r: compile_at(config, topology, devices, mesh, r, best["remat_policy"], say),
            rows, most)
    best["candidates"] = [{"mesh": r["mesh"], "remat_policy": r["remat_policy"],
                           "rows_per_device": r["rows_per_device"],
                           "tokens_per_s": r["roofline"]["tokens_per_s"],
                           "binding": r["roofline"]["binding"]} for r in ranked]
    return best


def mesh_text(mesh: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mesh.items() if v > 1) or "1 chip"


def row(r: dict, size: str) -> str:
    m, f, roof = r["memory"], r["flops"], r["roofline"]
    return (f"| {size} | {r['seq']} | {r['topology']} | {mesh_text(r['mesh'])} | "
            f"{r['rows_per_device']:g} | {r['remat_policy']} | "
            f"{m['total'] / tpu_chips.GiB:.2f} of {m['hbm'] / tpu_chips.GiB:.0f} GiB | "
            f"{f['ratio']:.2f} | {roof['mfu']:.0%} | {roof['binding']} | "
            + " / ".join(f"{v * 1e3:.1f}" for k, v in roof["terms_per_step_s"].items()
                         if k != "dcn")
            + " |")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="tiny,mini,small,medium,base,large")
    p.add_argument("--seqs", default="128,512")
    p.add_argument("--topologies", default="v5e-16,v5p-8")
    p.add_argument("--max-rows", type=int, default=512, help="at 128 tokens; /4 at 512")
    p.add_argument("--json", default="")
    a = p.parse_args(argv[1:])
    results = []
    if a.json and os.path.exists(a.json):  # rows of an earlier run are kept, not recompiled
        with open(a.json) as f:
            results = json.load(f)
    done = {(r["size"], r["seq"], r["topology"]) for r in results}
    for name in a.topologies.split(","):
        topology = tpu_chips.parse(name)
        devices = aot.tpu_devices(topology)
        for size in a.sizes.split(","):
            for seq in (int(s) for s in a.seqs.split(",")):
                if (size, seq, topology.accelerator_type) in done:
                    continue
                r = best_row(size, seq, topology, devices, a.max_rows * 128 // seq)
                if r is None:
                    print(f"| {size} | {seq} | {topology.accelerator_type} | nothing fits |")
                    continue
                r["size"] = size
                results.append(r)
                print(row(r, size), flush=True)
                if a.json:
                    with open(a.json, "w") as f:
                        json.dump(results, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
