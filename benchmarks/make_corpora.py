"""Build benchmark corpora from the bundled one (not committed).

    python -m benchmarks.make_corpora --mb 20 200 --output /tmp/corpora
    # -> /tmp/corpora/20mb/part-00000.txt ..., /tmp/corpora/200mb/...
    python -m benchmarks.make_corpora --short-docs --output /tmp/corpora
    # -> /tmp/corpora/short-docs/part-00000.txt (the bundled sentences in short documents)

Big corpora (--mb): each copy of the bundled corpus's chapters is shuffled with its own
seed (document order only; the chapters stay whole) and written as sentence-per-line text,
blank lines between documents, in files of about --file-mb MB.

Short documents (--short-docs), for packing: the bundled corpus's sentences, in order and
each once, cut into documents of lognormal sizes (median --median-sentences, log-space
sigma --sigma; at least one sentence), like encyclopedia articles rather than novel
chapters; deterministic (seed 0). Its real-token fraction, unpacked and packed:
    python -m flax_bert.data.prepare --input '/tmp/corpora/short-docs/*.txt' \
        --output /tmp/prep-short-512 --vocab-size 8192 --max-seq-length 512 [--packing]
(meta.json's train_real_token_fraction; the bundled corpus: --input 'corpus/*.txt.gz').
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator

import numpy as np

from configs.default import BUNDLED_CORPUS
from flax_bert.data import corpus

MB = 1 << 20
SHORT_DOC_SIGMA = 1.0  # log-space spread of short documents' sizes (in sentences)


def shuffled_copies(docs: list[str], size_mb: float) -> Iterator[str]:
    """Copies of docs, each in the order of its own seed, until size_mb MB."""
    total, seed = 0, 0
    while True:
        for i in np.random.default_rng(seed).permutation(len(docs)):
            yield docs[i]
            total += len(docs[i].encode()) + 2  # the blank line after it
            if total >= size_mb * MB:
                return
        seed += 1


def write_documents(docs: Iterable[str], folder: str, file_mb: float) -> int:
    """Write documents (blank lines between them) in files of about file_mb MB; returns
    the bytes written."""
    os.makedirs(folder, exist_ok=True)
    total, part, out = 0, 0, None
    for doc in docs:
        if out is None or out.tell() >= file_mb * MB:
            if out is not None:
                out.close()
            out = open(os.path.join(folder, f"part-{part:05d}.txt"), "w", encoding="utf-8")
            part += 1
        data = doc + "\n\n"
        out.write(data)
        total += len(data.encode())
    out.close()
    return total


def short_documents(sentences: list[str], median: float, sigma: float) -> list[str]:
    """The sentences in order, cut into documents of lognormal sizes (seed 0)."""
    rng = np.random.default_rng(0)
    docs, start = [], 0
    while start < len(sentences):
        size = max(1, round(float(rng.lognormal(np.log(median), sigma))))
        docs.append("\n".join(sentences[start : start + size]))
        start += size
    return docs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, nargs="+", default=[20, 200])
    p.add_argument("--output", default="/tmp/corpora")
    p.add_argument("--file-mb", type=float, default=5.0, help="size of each file")
    p.add_argument("--short-docs", action="store_true",
                   help="write OUTPUT/short-docs (the bundled sentences in short documents) "
                        "instead of the --mb corpora")
    p.add_argument("--median-sentences", type=float, default=8.0,
                   help="median sentences per short document")
    p.add_argument("--sigma", type=float, default=SHORT_DOC_SIGMA,
                   help="log-space sigma of the short documents' sizes")
    args = p.parse_args()
    paths = corpus.expand_inputs(BUNDLED_CORPUS)
    chapters = [d for _, d in corpus.iter_raw_documents(paths, "auto", "text")]
    if args.short_docs:
        sentences = [s for d in chapters for s in d]
        docs = short_documents(sentences, args.median_sentences, args.sigma)
        folder = os.path.join(args.output, "short-docs")
        written = write_documents(docs, folder, args.file_mb)
        print(f"{folder}: {len(docs)} documents, {written / MB:.1f} MB, "
              f"{len(os.listdir(folder))} files")
        return
    docs = ["\n".join(d) for d in chapters]
    for mb in args.mb:
        folder = os.path.join(args.output, f"{mb:g}mb")
        written = write_documents(shuffled_copies(docs, mb), folder, args.file_mb)
        print(f"{folder}: {written / MB:.1f} MB, {len(os.listdir(folder))} files")


if __name__ == "__main__":
    main()
