"""BERT WordPiece vocabulary: train one with HF `tokenizers`, or load a `vocab.txt`.

The tokenizer is BERT's: BertNormalizer (lower-case + accent stripping when `lowercase`),
BertPreTokenizer, WordPiece with `##` continuation pieces. A trained vocab starts with the
specials `[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4`; a loaded one (e.g. bert-base-uncased)
keeps its own ids, looked up by name in `SpecialIds`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from flax_bert.errors import UserError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # in id order for a trained vocab
CONTINUATION_PREFIX = "##"
MIN_FREQUENCY = 2  # A WordPiece seen once is not worth a vocab slot.
MAX_CHARS_PER_WORD = 100  # BERT's limit; longer words become [UNK].


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
    sentences: Iterable[str], vocab_size: int, lowercase: bool, output_dir: str
) -> str:
    """Train a WordPiece vocab on `sentences`; write `output_dir/vocab.txt`, return its path."""
    tok = _bert_tokenizer(
        models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_CHARS_PER_WORD), lowercase
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    os.makedirs(output_dir, exist_ok=True)
    vocab = tok.get_vocab()  # token -> id
    path = os.path.join(output_dir, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    return path


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


def special_ids(vocab_path: str) -> SpecialIds:
    """Ids of [PAD] [UNK] [CLS] [SEP] [MASK] in a vocab.txt."""
    index = {t: i for i, t in enumerate(read_vocab(vocab_path))}
    return SpecialIds(index[PAD], index[UNK], index[CLS], index[SEP], index[MASK])


def continuation_table(vocab_path: str) -> np.ndarray:
    """[vocab_size] bool: True for `##` continuation pieces (for whole-word masking)."""
    return np.array([t.startswith(CONTINUATION_PREFIX) for t in read_vocab(vocab_path)])
