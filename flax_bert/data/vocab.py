"""BERT WordPiece vocabulary: train one with HF `tokenizers`, or load a `vocab.txt`.

The tokenizer is BERT's: BertNormalizer (lower-case + accent stripping when `lowercase`),
BertPreTokenizer, WordPiece with `##` continuation pieces. A trained vocab starts with the
specials `[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4`; a loaded one (e.g. bert-base-uncased)
keeps its own ids, looked up by name in `SpecialIds`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import unicodedata
from collections.abc import Callable, Iterable

import numpy as np
from tokenizers import (Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                        trainers)

from flax_bert.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # in id order for a trained vocab
CONTINUATION_PREFIX = "##"
MIN_FREQUENCY = 2  # A WordPiece seen once is not worth a vocab slot.
MAX_CHARS_PER_WORD = 100  # BERT's limit; longer words become [UNK].
SENTENCES_PER_SCAN = 10_000  # Sentences normalized at a time when listing ## pieces.


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int


def _bert_tokenizer(model: models.WordPiece, lowercase: bool) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tok


def train_vocab(
    sentences: Callable[[], Iterable[str]], vocab_size: int, lowercase: bool, output_dir: str
) -> str:
    """Train a WordPiece vocab on the sentences `sentences()` yields (called twice: the
    text is streamed, not held); write `output_dir/vocab.txt`, return its path.

    Deterministic: the trainer gives the `##` character pieces ids in hash-map order and
    breaks ties between merges by id, so the same text could give different vocabs
    (huggingface/tokenizers#1794; not its threads). Those pieces are passed in sorted
    order as special tokens, which fixes their ids before training."""
    tok = _bert_tokenizer(
        models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD), lowercase
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS) + _continuation_pieces(tok, sentences()),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    tok.train_from_iterator(sentences(), trainer=trainer)
    os.makedirs(output_dir, exist_ok=True)
    trained = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    path = os.path.join(output_dir, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in _deterministic_order(trained))
    return path


def _continuation_pieces(tok: Tokenizer, sentences: Iterable[str]) -> list[str]:
    """Sorted `##c` for every character c that follows another in a word (the pieces the
    trainer makes; a superset at worst). A word is a run of characters that are neither
    whitespace nor punctuation (BertPreTokenizer); characters the normalizer surrounds with
    spaces (Chinese) are words alone. Found on the raw text, vectorized over code points,
    then mapped through the normalizer one distinct character at a time."""
    normalized: dict[str, str] = {}
    follows: set[int] = set()  # code points after a word character
    starts: set[int] = set()  # code points starting a word
    it = iter(sentences)
    while batch := list(itertools.islice(it, SENTENCES_PER_SCAN)):
        text = "\n".join(batch)
        for c in set(text).difference(normalized):
            normalized[c] = tok.normalizer.normalize_str(c)
        breaks = [ord(c) for c in set(text) if _breaks_words(c) or
                  any(_breaks_words(n) for n in normalized[c])]
        cp = np.frombuffer(text.encode("utf-32-le"), np.uint32)  # [chars]
        in_word = ~np.isin(cp, breaks)  # [chars]
        after_word = np.concatenate([[False], in_word[:-1]])  # [chars]
        follows.update(np.unique(cp[in_word & after_word]).tolist())
        starts.update(np.unique(cp[in_word & ~after_word]).tolist())
    pieces = {n for c in follows for n in normalized[chr(c)]}
    pieces.update(n for c in starts for n in normalized[chr(c)][1:])
    return sorted(CONTINUATION_PREFIX + c for c in pieces if not _breaks_words(c))


def _breaks_words(c: str) -> bool:
    return c.isspace() or _is_punctuation(c)


def _is_punctuation(c: str) -> bool:
    """BERT's punctuation: ASCII punctuation or a Unicode P* character."""
    return (c.isascii() and not c.isalnum() and c.isprintable() and not c.isspace()) or \
        unicodedata.category(c).startswith("P")


def _deterministic_order(tokens: list[str]) -> list[str]:
    """Specials, then characters, `##` characters, words, `##` pieces, each sorted.

    The trainer's ids follow hash-map order in places; ids do not matter to WordPiece
    (longest match), so sorting gives the same vocab.txt for the same tokens."""
    n = len(CONTINUATION_PREFIX)

    def group(t: str) -> tuple[int, str]:
        cont = t.startswith(CONTINUATION_PREFIX)
        single = len(t) == (n + 1 if cont else 1)
        return (0 if single else 2) + int(cont), t

    rest = sorted((t for t in tokens if t not in SPECIAL_TOKENS), key=group)
    return list(SPECIAL_TOKENS) + rest


def read_vocab(path: str) -> list[str]:
    """Tokens of a BERT vocab.txt in id order; checks the specials are there."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such vocab file; check --vocab / config.data.vocab")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise UserError(f"{path}: vocab lacks {' '.join(missing)}; add them or train a vocab")
    return tokens


def load_tokenizer(vocab_path: str, lowercase: bool) -> Tokenizer:
    """The BERT tokenizer for a vocab.txt (no special tokens added by `encode`)."""
    tokens = read_vocab(vocab_path)
    model = models.WordPiece(
        {t: i for i, t in enumerate(tokens)},
        unk_token=UNK,
        max_input_chars_per_word=MAX_CHARS_PER_WORD,
    )
    return _bert_tokenizer(model, lowercase)


def input_tokenizer(vocab_path: str, lowercase: bool, max_seq_length: int, strategy: str,
                    stride: int = 0) -> Tokenizer:
    """The tokenizer of a model's inputs, as transformers' BertTokenizerFast makes them:
    `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, the special tokens written in a text read
    as themselves (a `[MASK]` in a cloze question), truncated by `strategy`
    (longest_first, only_second; overflowing windows share `stride` tokens) and padded to
    max_seq_length."""
    tok = load_tokenizer(vocab_path, lowercase)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    ids = special_ids(vocab_path)
    tok.post_processor = processors.BertProcessing((SEP, ids.sep), (CLS, ids.cls))
    tok.enable_truncation(max_length=max_seq_length, stride=stride, strategy=strategy)
    tok.enable_padding(length=max_seq_length, pad_id=ids.pad, pad_token=PAD)
    return tok


def special_ids(vocab_path: str) -> SpecialIds:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK] in a vocab.txt."""
    index = {t: i for i, t in enumerate(read_vocab(vocab_path))}
    return SpecialIds(index[PAD], index[UNK], index[CLS], index[SEP], index[MASK])


def continuation_table(vocab_path: str) -> np.ndarray:
    """[vocab_size] bool: True for `##` continuation pieces (for whole-word masking)."""
    return np.array([t.startswith(CONTINUATION_PREFIX) for t in read_vocab(vocab_path)])
