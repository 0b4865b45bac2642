"""The trained vocab.txt is a BERT vocab: HF tokenizers and transformers read it the same."""

import os

import pytest

from flax_bert.data import vocab as vocab_lib

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Mr. Darcy's estate, Pemberley, was worth ten thousand a year!",
    "Naïve café owners said: \"Élan\" -- and left; 1813/1815 (two dates).",
    "Unseenwordthatisverylongindeed ☃ zyxwv.",
]
TRAIN = SENTENCES * 20 + [
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home.",
] * 30


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    return vocab_lib.train_vocab(lambda: TRAIN, 300, True, str(tmp_path_factory.mktemp("vocab")))


def test_specials_come_first(vocab_path):
    tokens = vocab_lib.read_vocab(vocab_path)
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab_lib.special_ids(vocab_path) == vocab_lib.SpecialIds(0, 1, 2, 3, 4)
    assert len(tokens) == len(set(tokens)) <= 300


def test_hf_tokenizers_agree(vocab_path):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    ours = vocab_lib.load_tokenizer(vocab_path, lowercase=True)
    hf = BertWordPieceTokenizer(vocab_path, lowercase=True)
    # transformers 5 takes the vocab as `vocab=`; from_pretrained finds vocab.txt in a folder.
    tf = BertTokenizerFast(vocab=vocab_path, do_lower_case=True)
    tf_dir = BertTokenizerFast.from_pretrained(os.path.dirname(vocab_path))
    for s in SENTENCES:
        ids = ours.encode(s, add_special_tokens=False).ids
        assert hf.encode(s, add_special_tokens=False).ids == ids
        assert tf(s, add_special_tokens=False)["input_ids"] == ids
        assert tf(s)["input_ids"] == tf_dir(s)["input_ids"] == [2] + ids + [3]  # [CLS] [SEP]
    unseen = "an umbrella ☂ here"  # ☂ never occurs in TRAIN
    assert 1 in ours.encode(unseen).ids
    assert tf(unseen, add_special_tokens=False)["input_ids"] == ours.encode(unseen).ids


def test_missing_specials_is_a_user_error(tmp_path):
    from flax_bert.errors import UserError

    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\nhello\n")
    with pytest.raises(UserError, match="vocab.txt: vocab lacks"):
        vocab_lib.read_vocab(str(bad))
    with pytest.raises(UserError, match="no such vocab file"):
        vocab_lib.read_vocab(os.path.join(tmp_path, "nope.txt"))


# The reproducer of huggingface/tokenizers#1794, twice (min_frequency is 2): the trainer
# gave its `##` character pieces ids in hash-map order and broke merge ties by id, so
# trainings of this text gave two different vocabs (about 1 in 3 runs differed).
TIES = ["Wel come to the 🤗 Tok en izers libr ary."] * 2


def test_training_is_deterministic(tmp_path):
    vocabs = {
        open(vocab_lib.train_vocab(lambda: TIES, 1000, True, str(tmp_path / str(i)))).read()
        for i in range(20)
    }
    assert len(vocabs) == 1


def test_continuation_pieces_are_the_pre_tokenizers(vocab_path):
    """The `##` pieces fixed before training are those of the words BertNormalizer and
    BertPreTokenizer make (accents stripped, Chinese characters alone, punctuation apart)."""
    text = SENTENCES + TIES + ["中文字 a中b ÉCOLE façade x-y«z» 1.5ᵃ"]
    tok = vocab_lib._bert_tokenizer(vocab_lib.models.WordPiece(unk_token="[UNK]"), True)
    words = [w for s in text for w, _ in
             tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(s))]
    expected = sorted({"##" + c for w in words for c in w[1:]})
    assert vocab_lib._continuation_pieces(tok, text) == expected
    assert "##中" not in expected and "##e" in expected  # sanity of the reference
