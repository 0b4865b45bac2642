"""Reading a corpus into documents (lists of sentences).

Accepted inputs:
  * text files (gzip'd or not, detected by magic bytes), UTF-8, in one of two formats:
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
import os
import re
from collections.abc import Iterator

from flax_bert.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
AUTO_SAMPLE_LINES = 1000  # Non-blank lines looked at to guess a file's format.
AUTO_PARAGRAPH_FRACTION = 0.3  # Fraction of "prose-like" lines that means "paragraphs".
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev hon gen col capt lt sgt messrs mme mlle vs etc "
    "e.g i.e cf al no vol fig p pp ch sec ed eds approx dept est inc ltd co".split()
)
_BOUNDARY_RE = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")
_TERMINAL_RE = re.compile(r"""[.!?]["'”’)\]]*$""")
_DOC_BREAK_RE = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")  # two or more blank lines
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
    """Files (globs expanded, sorted) or one `datasets` folder; a missing path is an error."""
    patterns = [p.strip() for p in (inputs.split(",") if isinstance(inputs, str) else inputs)]
    paths = []
    for pattern in filter(None, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            raise UserError(f"{pattern}: no such file; check --input / config.data.input")
        paths.extend(matches)
    if not paths:
        raise UserError("no input given; pass --input FILE_OR_GLOB (config.data.input)")
    return paths


def is_dataset_dir(path: str) -> bool:
    """True for a folder written by `datasets`' save_to_disk."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f))
        for f in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def read_text(path: str) -> str:
    """A whole file as text (gunzipped when gzip'd); bad UTF-8 is a UserError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a text file or a saved `datasets` dataset")
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e}); check the file is intact")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"re-encode it, e.g. iconv -f latin1 -t utf-8"
        ) from None


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
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if input_format == "sentences":
        docs = [
            [ln.strip() for ln in block.split("\n") if ln.strip()]
            for block in _PARA_BREAK_RE.split(text)
        ]
    elif input_format == "paragraphs":
        docs = [
            [s for para in _PARA_BREAK_RE.split(block) for s in split_sentences(para)]
            for block in _DOC_BREAK_RE.split(text)
        ]
    else:
        raise UserError(
            f"config.data.input_format={input_format!r}: use auto, sentences or paragraphs"
        )
    return [d for d in docs if d]


def iter_raw_documents(
    paths: list[str], input_format: str, text_column: str
) -> Iterator[tuple[str, list[str] | str]]:
    """(source, document) pairs; a document is a list of sentences, or for `datasets` rows
    the raw text (cut into sentences later, in the tokenizing workers)."""
    for path in paths:
        if is_dataset_dir(path):
            yield from _iter_dataset_rows(path, text_column)
            continue
        text = read_text(path)
        if not text.strip():
            raise UserError(f"{path}: empty file; remove it from --input or give it text")
        for doc in text_to_documents(text, input_format):
            yield path, doc


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
