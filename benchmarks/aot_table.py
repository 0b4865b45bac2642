"""The TPU readiness table of benchmarks/README.md: each size file compiled for TPU slices
with flax_bert.aot (no TPU needed), the largest rows a chip that fits found by doubling.

    python -m benchmarks.aot_table --sizes base,large --seqs 128,512 \
        --topologies v5e-16,v5p-8 --json /tmp/aot_table.json

Each row: the size file (packed, as it trains; bf16; BERT's 30522-token vocab; one phase at
`seq` tokens, `max_predictions_per_seq` 20 at 128 and 80 at 512), a data-parallel mesh
(data over every chip), no remat. Rows a chip start at --start (8 at 512 tokens, 32 at 128)
and double while the train step fits the chip's HBM (halve while it does not), up to
--max-rows; then the largest that fits is reported. If no rows a chip fit without remat,
the same search runs with remat nothing_saveable.
"""

from __future__ import annotations

import argparse
import json
import sys

from flax_bert import aot, run_config, tpu_chips


def size_args(size: str, seq: int) -> list[str]:
    return [f"--config=configs/{size}.py", f"--config.data.max_seq_length={seq}",
            f"--config.data.max_predictions_per_seq={20 if seq <= 128 else 80}",
            "--config.train.phase1_fraction=0", "--config.train.dtype=bfloat16",
            "--config.model.vocab_size=30522"]


def largest_fit(size: str, seq: int, topology: tpu_chips.Topology, start: int,
                most: int, remat: str, devices: list, say=print) -> dict | None:
    """Doubles (or halves) the rows a chip from `start` until the step stops (starts)
    fitting; the report of the largest that fits, or None."""
    chips = len(devices)
    tried: dict[int, dict] = {}

    def trial(rows: int) -> dict:
        if rows not in tried:
            config = run_config.load(size_args(size, seq) + [
                f"--config.train.global_batch_size={rows * chips}",
                f"--config.train.remat_policy={remat}"], "aot_table")
            tried[rows] = aot.analyse(config, topology, with_eval=False, devices=devices)
            r = tried[rows]
            say(f"  {size} seq {seq} {topology.accelerator_type} {rows} rows a chip, remat "
                f"{remat}: {r['memory']['total'] / tpu_chips.GiB:.2f} GiB, "
                f"{'fits' if r['memory']['fits'] else 'does not fit'}, "
                f"{r['compile_seconds']:.0f} s")
        return tried[rows]

    rows = start
    if trial(rows)["memory"]["fits"]:
        while 2 * rows <= most and trial(2 * rows)["memory"]["fits"]:
            rows *= 2
    else:
        while rows > 1 and not trial(rows // 2)["memory"]["fits"]:
            rows //= 2
        rows //= 2
        if not rows:
            return None
    return tried[rows]


def row(r: dict, size: str) -> str:
    m, f, roof = r["memory"], r["flops"], r["roofline"]
    return (f"| {size} | {r['seq']} | {r['topology']} | data {r['mesh']['data']} | "
            f"{r['rows_per_device']:g} | {r['remat_policy']} | "
            f"{m['total'] / tpu_chips.GiB:.2f} of {m['hbm'] / tpu_chips.GiB:.0f} GiB | "
            f"{f['ratio']:.2f} | {roof['mfu']:.0%} | {roof['binding']} | "
            + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in roof["terms_per_step_s"].items())
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
    for name in a.topologies.split(","):
        topology = tpu_chips.parse(name)
        devices = aot.tpu_devices(topology)
        for size in a.sizes.split(","):
            for seq in (int(s) for s in a.seqs.split(",")):
                most = a.max_rows * 128 // seq
                for remat in ("none", "nothing_saveable"):
                    r = largest_fit(size, seq, topology, 32 if seq <= 128 else 8, most,
                                    remat, devices)
                    if r is not None:
                        break
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
