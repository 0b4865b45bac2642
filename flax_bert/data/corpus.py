"""Reading a corpus into documents (lists of sentences).

Accepted inputs (read as streams: memory does not grow with a file's size):
  * text files (gzip'd or not, detected by magic bytes; local or gs://), UTF-8, in one of
    two formats:
    - "sentences" (google-research/bert): one sentence per line, a blank line between
      documents;
    - "paragraphs" (raw prose): paragraphs separated by one blank line, documents separated
      by two or more blank lines (a file without those is one document); wrapped lines of a
      paragraph are joined and the paragraph is cut with `split_sentences`.
    "auto" picks "paragraphs" for a file when at least `AUTO_PARAGRAPH_FRACTION` of its
    first `AUTO_SAMPLE_LINES` non-blank lines hold more than one sentence or do not end a
    sentence (wrapped prose), else "sentences".
  * a Hugging Face `datasets` dataset saved with `save_to_disk` (a folder): each row of
    `text_column` is one document, cut into sentences as above ("auto" = "paragraphs"
    unless the text has one sentence per line).

Sentence rule (`split_sentences`): a sentence ends at `.`, `!` or `?` (plus any closing
quotes/brackets) followed by whitespace and an upper-case letter, a digit or an opening
quote, unless the word before the period is a known abbreviation (Mr., Dr., e.g., ...) or a
single capital letter (an initial).
"""

from __future__ import annotations

import glob
import gzip
import itertools
import os
import re
import zlib
from collections.abc import Iterable, Iterator

from flax_bert.data import storage
from flax_bert.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
AUTO_SAMPLE_LINES = 1000  # Non-blank lines looked at to guess a file's format.
AUTO_PARAGRAPH_FRACTION = 0.3  # Fraction of "prose-like" lines that means "paragraphs".
READ_BYTES = 1 << 20  # Bytes read at a time from a corpus file.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev hon gen col capt lt sgt messrs mme mlle vs etc "
    "e.g i.e cf al no vol fig p pp ch sec ed eds approx dept est inc ltd co".split()
)
_BOUNDARY_RE = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")
_TERMINAL_RE = re.compile(r"""[.!?]["'”’)\]]*$""")
_PARA_BREAK_RE = re.compile(r"\n[ \t]*\n")

Document = list[str]  # sentences


def split_sentences(text: str) -> list[str]:
    """Cut prose into sentences with the rule in the module docstring."""
    text = " ".join(text.split())
    sentences, start = [], 0
    for match in _BOUNDARY_RE.finditer(text):
        end = match.end(1)
        words = text[start:end].rsplit(None, 1)
        last = words[-1].rstrip(".!?\"'”’)]").lower() if words else ""
        last = last.lstrip("\"'“‘([")
        if match.group(1).startswith(".") and (
            last in ABBREVIATIONS or (len(last) == 1 and last.isalpha())
        ):
            continue
        sentences.append(text[start:end])
        start = match.end()
    if start < len(text):
        sentences.append(text[start:])
    return sentences


def expand_inputs(inputs: str | list[str]) -> list[str]:
    """Files (globs expanded, sorted) or `datasets` folders; a missing path is an error.
    A relative path is read from the working folder."""
    patterns = [p.strip() for p in (inputs.split(",") if isinstance(inputs, str) else inputs)]
    paths = []
    for pattern in filter(None, patterns):
        matches = _matches(pattern)
        if not matches:
            raise UserError(f"{pattern}: no such file; check --input / config.data.input")
        paths.extend(matches)
    if not paths:
        raise UserError("no input given; pass --input FILE_OR_GLOB (config.data.input)")
    return paths


def _matches(pattern: str) -> list[str]:
    if "://" in pattern:  # e.g. gs://bucket/dir/*.txt (a pattern in the last part only)
        parent, name = pattern.rsplit("/", 1)
        if glob.has_magic(name):
            return sorted(str(m) for m in storage.path(parent).glob(name))
        return [pattern] if storage.path(pattern).exists() else []
    found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    return [m for m in found if os.path.exists(m)]


def is_dataset_dir(path: str) -> bool:
    """True for a folder written by `datasets`' save_to_disk."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f))
        for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def read_lines(path: str) -> Iterator[str]:
    """A text file's lines (gunzipped when gzip'd, CR/CRLF as LF), read as a stream in
    blocks of whole lines; an unreadable, binary or non-UTF-8 file is a UserError."""
    offset, rest = 0, b""  # offset: bytes before `rest` in the (gunzipped) file
    try:
        with storage.path(path).open("rb") as raw:
            f = gzip.GzipFile(fileobj=raw) if raw.read(2) == GZIP_MAGIC else raw
            raw.seek(0)
            while True:
                chunk = f.read(READ_BYTES)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                block, rest = data[:cut], data[cut:]
                if b"\0" in block:
                    raise UserError(f"{path}: binary data (a NUL byte at offset "
                                    f"{offset + block.index(0)}), not text; remove it from --input")
                try:
                    text = block.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(
                        f"{path}: not UTF-8 (byte 0x{block[e.start]:02x} at offset "
                        f"{offset + e.start}); re-encode it, e.g. iconv -f latin1 -t utf-8"
                    ) from None
                offset += cut
                lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                yield from lines[:-1] if chunk else lines
                if not chunk:
                    return
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a text file or a saved `datasets` dataset")
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read ({e}); check the file is intact") from None


def guess_format(text: str) -> str:
    """"sentences" or "paragraphs" for text, by the rule in the module docstring."""
    lines = [ln.strip() for ln in text.splitlines()[: 4 * AUTO_SAMPLE_LINES] if ln.strip()]
    lines = lines[:AUTO_SAMPLE_LINES]
    if not lines:
        return "sentences"
    prose = sum(
        1 for ln in lines if not _TERMINAL_RE.search(ln) or len(split_sentences(ln)) > 1
    )
    return "paragraphs" if prose >= AUTO_PARAGRAPH_FRACTION * len(lines) else "sentences"


def text_to_documents(text: str, input_format: str) -> list[Document]:
    """Documents (lists of sentences) of one file's text."""
    if input_format == "auto":
        input_format = guess_format(text)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return list(_documents(lines, input_format))


def _is_blank(line: str) -> bool:
    return not line.strip(" \t")


def _documents(lines: Iterable[str], input_format: str) -> Iterator[Document]:
    """Documents of a stream of lines in a known format (see the module docstring)."""
    if input_format == "sentences":
        doc: Document = []
        for line in lines:
            if _is_blank(line):
                if doc:
                    yield doc
                doc = []
            elif line.strip():
                doc.append(line.strip())
        if doc:
            yield doc
    elif input_format == "paragraphs":
        doc, para, blanks = [], [], 0
        for line in lines:
            if _is_blank(line):
                blanks += 1
                continue
            if blanks and para:
                doc.extend(split_sentences(" ".join(para)))
                para = []
            if blanks >= 2 and doc:
                yield doc
                doc = []
            blanks = 0
            para.append(line)
        if para:
            doc.extend(split_sentences(" ".join(para)))
        if doc:
            yield doc
    else:
        raise UserError(
            f"config.data.input_format={input_format!r}: use auto, sentences or paragraphs"
        )


def _file_documents(path: str, input_format: str) -> Iterator[Document]:
    lines = read_lines(path)
    if input_format == "auto":  # guess from the head, then go on with the stream
        head = list(itertools.islice(lines, AUTO_SAMPLE_LINES * 4))
        input_format = guess_format("\n".join(head))
        lines = itertools.chain(head, lines)
    return _documents(lines, input_format)


def iter_raw_documents(
    paths: list[str], input_format: str, text_column: str
) -> Iterator[tuple[str, list[str] | str]]:
    """(source, document) pairs; a document is a list of sentences, or for `datasets` rows
    the raw text (cut into sentences later, in the tokenizing workers)."""
    for path in paths:
        if is_dataset_dir(path):
            yield from _iter_dataset_rows(path, text_column)
            continue
        empty = True
        for doc in _file_documents(path, input_format):
            empty = False
            yield path, doc
        if empty:
            raise UserError(f"{path}: empty file; remove it from --input or give it text")


def _iter_dataset_rows(path: str, text_column: str) -> Iterator[tuple[str, str]]:
    import datasets  # heavy import, only for dataset folders

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else datasets.concatenate_datasets(list(ds.values()))
    if text_column not in ds.column_names:
        raise UserError(
            f"{path}: no column {text_column!r} (has {ds.column_names}); "
            f"set --text-column / config.data.text_column"
        )
    for batch in ds.select_columns([text_column]).iter(batch_size=1000):
        for text in batch[text_column]:
            if text and text.strip():
                yield path, text


def to_sentences(doc: list[str] | str, input_format: str) -> Document:
    """A document's sentences; raw `datasets` text is cut by format (auto = guessed)."""
    if not isinstance(doc, str):
        return doc
    if input_format == "auto":
        input_format = guess_format(doc)
    if input_format == "sentences":
        return [ln.strip() for ln in doc.splitlines() if ln.strip()]
    return [s for para in _PARA_BREAK_RE.split(doc) for s in split_sentences(para)]
