"""Build big corpora for `data_prep.py` by reshuffling the bundled one (not committed).

    python benchmarks/make_corpora.py --mb 20 200 --output /tmp/corpora
    # -> /tmp/corpora/20mb/part-00000.txt ..., /tmp/corpora/200mb/...

Each copy of the bundled corpus's chapters is shuffled with its own seed (document order
only; the chapters stay whole) and written as sentence-per-line text, blank lines between
documents, in files of about --file-mb MB.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flax_bert.data import corpus  # noqa: E402
from flax_bert.data.options import DataOptions  # noqa: E402

MB = 1 << 20


def build(docs: list[str], size_mb: float, folder: str, file_mb: float) -> int:
    """Write shuffled copies of docs until size_mb MB; returns the bytes written."""
    os.makedirs(folder, exist_ok=True)
    total, part, out, seed = 0, 0, None, 0
    while total < size_mb * MB:
        for i in np.random.default_rng(seed).permutation(len(docs)):
            if out is None or out.tell() >= file_mb * MB:
                if out is not None:
                    out.close()
                out = open(os.path.join(folder, f"part-{part:05d}.txt"), "w", encoding="utf-8")
                part += 1
            data = docs[i] + "\n\n"
            out.write(data)
            total += len(data.encode())
            if total >= size_mb * MB:
                break
        seed += 1
    out.close()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, nargs="+", default=[20, 200])
    p.add_argument("--output", default="/tmp/corpora")
    p.add_argument("--file-mb", type=float, default=5.0, help="size of each file")
    args = p.parse_args()
    paths = corpus.expand_inputs(DataOptions.defaults().input[0])
    docs = ["\n".join(d) for _, d in corpus.iter_raw_documents(paths, "auto", "text")]
    for mb in args.mb:
        folder = os.path.join(args.output, f"{mb:g}mb")
        written = build(docs, mb, folder, args.file_mb)
        print(f"{folder}: {written / MB:.1f} MB, {len(os.listdir(folder))} files")


if __name__ == "__main__":
    main()
