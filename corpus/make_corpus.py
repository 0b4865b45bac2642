"""Rebuild the bundled corpus corpus/*.txt.gz from two Debian packages.

    python corpus/make_corpus.py [--deb r-cran-janeaustenr_1.0.0-1_all.deb \
        r-cran-tokenizers_0.3.0-1_amd64.deb] [--out corpus]

Without --deb it runs `apt-get download` for them in a temporary folder.
r-cran-janeaustenr stores Jane Austen's six novels and r-cran-tokenizers Herman
Melville's Moby Dick (Project Gutenberg texts, public domain) as R data in a lazy-load
database (data/Rdata.rdb + .rdx); this script reads them with a small R-unserializer (no R
needed), drops Gutenberg's header and licence footer, cuts each novel into chapters (one
document each),
joins the wrapped lines of each paragraph, splits paragraphs into sentences with
`flax_bert.data.corpus.split_sentences`, and writes one sentence per line with a blank line
between chapters, one gzip file per novel (gzip mtime 0, so rebuilds are byte-identical).
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flax_bert.data.corpus import split_sentences  # noqa: E402

# Debian package -> the R data folder inside it. Both packages are MIT; the texts are
# Project Gutenberg transcriptions of public-domain books.
PACKAGES = {
    "r-cran-janeaustenr": "usr/lib/R/site-library/janeaustenr/data",  # Austen's 6 novels
    "r-cran-tokenizers": "usr/lib/R/site-library/tokenizers/data",  # Moby Dick (Melville)
}
# Chapter headings: "CHAPTER 1", "Chapter 1", "CHAPTER XII", "CHAPTER 1. Loomings.",
# and Moby Dick's "Epilogue".
CHAPTER_RE = re.compile(r"^\s*(chapter\s+([0-9]+|[ivxlc]+)\b.*|epilogue)$", re.IGNORECASE)
# Lines that are headings, not prose ("VOLUME I", "THE END", "FINIS").
HEADING_RE = re.compile(r"^\s*(volume\s+[ivx0-9]+|the end|finis)\.?\s*$", re.IGNORECASE)
# Project Gutenberg's licence footer starts at a line like this (kept out of the corpus).
GUTENBERG_END_RE = re.compile(r"^\s*(\*\*\* ?END OF|End of (the )?Project Gutenberg)", re.I)
MIN_CHAPTER_SENTENCES = 10  # Drop fragments (title pages) shorter than this.


class _RReader:
    """Minimal reader of R's XDR serialization (enough for character vectors and lists)."""

    def __init__(self, buf: bytes):
        self.buf, self.pos, self.refs = buf, 0, []

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return value

    def read(self):
        assert self.buf[:2] == b"X\n", "not an XDR R serialization"
        self.pos = 2
        version = self._int()
        self._int(), self._int()  # writer / min reader R versions
        if version == 3:
            n = self._int()  # length of the native encoding name
            self.pos += n
        return self._item()

    def _item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == 0xFE:  # NILVALUE
            return None
        if kind == 0xFF:  # REFSXP
            return self.refs[(flags >> 8) - 1]
        if kind == 0x01:  # SYMSXP
            sym = self._item()
            self.refs.append(sym)
            return sym
        if kind == 0x09:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            s = self.buf[self.pos : self.pos + n].decode("utf-8")
            self.pos += n
            return s
        if kind == 0x02:  # LISTSXP (pairlist) -> dict
            out = {}
            if has_attr:
                self._item()
            tag = self._item() if has_tag else len(out)
            out[tag] = self._item()
            rest = self._item()
            if isinstance(rest, dict):
                out.update(rest)
            return out
        if kind in (0x0D, 0x0A):  # INTSXP, LGLSXP
            n = self._int()
            value = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif kind in (0x10, 0x13):  # STRSXP, VECSXP
            value = [self._item() for _ in range(self._int())]
        else:
            raise ValueError(f"unsupported R type {kind}")
        if has_attr:
            attrs = self._item()
            if isinstance(attrs, dict) and "names" in attrs:
                value = dict(zip(attrs["names"], value))
        return value


def read_novels(data_dir: str) -> dict[str, list[str]]:
    """{name: lines} from the lazy-load database Rdata.rdb/.rdx of the package."""
    with open(os.path.join(data_dir, "Rdata.rdx"), "rb") as f:
        index = _RReader(gzip.decompress(f.read())).read()
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[offset : offset + length]
        value = _RReader(zlib.decompress(chunk[4:])).read()  # 4 bytes: raw length
        if isinstance(value, dict):  # a named character vector, e.g. mobydick
            value = "\n".join(value.values())
        if isinstance(value, str):  # one string holding the whole Gutenberg file
            value = value.lstrip("\ufeff").replace("\r\n", "\n").split("\n")
        novels[name] = value
    return novels


def gutenberg_body(lines: list[str]) -> list[str]:
    """Lines from the first chapter heading up to Project Gutenberg's licence footer."""
    start = next((i for i, ln in enumerate(lines) if CHAPTER_RE.match(ln or "")), 0)
    end = next(
        (i for i, ln in enumerate(lines) if i > start and GUTENBERG_END_RE.match(ln or "")),
        len(lines),
    )
    return lines[start:end]


def chapters(lines: list[str]) -> list[list[str]]:
    """Cut a novel into chapters; each chapter is a list of sentences."""
    docs, paragraphs, current = [], [], []

    def flush_paragraph():
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    def flush_chapter():
        flush_paragraph()
        sentences = [s for p in paragraphs for s in split_sentences(p)]
        if len(sentences) >= MIN_CHAPTER_SENTENCES:
            docs.append(sentences)
        paragraphs.clear()

    for line in lines:
        line = (line or "").strip()
        if CHAPTER_RE.match(line):
            flush_chapter()
        elif not line or HEADING_RE.match(line):
            flush_paragraph()
        else:
            current.append(line.replace("_", ""))  # _italics_ markers
    flush_chapter()
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", nargs="*", default=[],
                        help="downloaded .deb files (default: apt-get download them)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "corpus"))
    args = parser.parse_args()
    novels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for package, data_dir in PACKAGES.items():
            prefix = package + "_"
            debs = [os.path.abspath(d) for d in args.deb if os.path.basename(d).startswith(prefix)]
            if not debs:
                subprocess.run(["apt-get", "download", package], cwd=tmp, check=True)
                debs = [os.path.join(tmp, f) for f in os.listdir(tmp)
                        if f.startswith(package + "_") and f.endswith(".deb")]
            target = os.path.join(tmp, package)
            subprocess.run(["dpkg-deb", "-x", debs[0], target], check=True)
            novels.update(read_novels(os.path.join(target, data_dir)))
    os.makedirs(args.out, exist_ok=True)
    for name, lines in sorted(novels.items()):
        docs = chapters(gutenberg_body(lines))
        text = "\n\n".join("\n".join(doc) for doc in docs) + "\n"
        path = os.path.join(args.out, f"{name}.txt.gz")
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(text.encode("utf-8"))
        n_sent = sum(len(d) for d in docs)
        print(f"{path}: {len(docs)} chapters, {n_sent} sentences, {len(text) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
