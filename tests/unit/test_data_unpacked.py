"""Unpacked data is what it always was: the shards' bytes, the cache key (so folders
prepared before stay valid, meta.json without packing's keys included) and the train and
eval batches equal recorded digests.

The corpus is the marker corpus with a hand-written vocab (no vocab training: the digests
depend on this code only); a third of the marker words are left out of the vocab, so they
split into letter pieces and whole-word masking has words to keep together."""

import hashlib
import os
import string

import pytest
from etils import epath

from tests.data_fixtures import marker_corpus
from flax_bert.data import folder as folder_lib, pipeline, prepare as prepare_lib
from flax_bert.data import vocab as vocab_lib
from flax_bert.data.config import DataOptions

# sha256 of the train shards, the eval shards, 4 train batches and every eval batch, per
# option set; recorded from the unpacked code.
GOLDEN = {
    "dynamic": "9d163e99ae7ef0a04a97129971ff8cd84941203e3f07e3caab2b888aa73331b0",
    "static": "e22163dc8112c75699876330a17dbbe35b938bfbeeca619722f30593155b79a6",
    "whole_word": "b5d3a6fd3fd1eb155c2663cbfdc8afddd41d6992dda2767c4682f6856be3a404",
}
# cache_key's fingerprint of the marker options with a fixed input (the shard names).
GOLDEN_FINGERPRINT = "c6489b81"
OPTION_SETS = {
    "dynamic": {},
    "static": {"dynamic_masking": False},
    "whole_word": {"whole_word_masking": True},
}
BATCH = 8
PACKING_META_KEYS = {"packed", "max_pairs_per_row"} | {
    f"{what}" for split in ("train", "eval") for what in (
        f"num_{split}_rows", f"num_{split}_pairs", f"{split}_real_token_fraction")}


def write_vocab(path: str, word_doc: dict[str, int]) -> str:
    """Specials, punctuation, letters, ## letters and two thirds of the marker words."""
    letters = list(string.ascii_lowercase)
    words = sorted(word_doc)[::3] + sorted(word_doc)[1::3]
    tokens = list(vocab_lib.SPECIAL_TOKENS) + ["."] + letters + ["##" + c for c in letters]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in tokens + words)
    return path


def marker_options(root: str, **overrides) -> DataOptions:
    corpus_path = os.path.join(root, "corpus.txt")
    word_doc = marker_corpus(corpus_path, num_docs=8, sentences=40)
    vocab = write_vocab(os.path.join(root, "vocab-in.txt"), word_doc)
    return DataOptions().replace(
        input=(corpus_path,), vocab=vocab, max_seq_length=48, max_predictions_per_seq=8,
        eval_fraction=0.25, num_workers=1, dupe_factor=2, **overrides)


def digest(out: str, opts: DataOptions) -> str:
    """sha256 over the shards (in meta.json's order) and the batches of a folder."""
    meta = pipeline.load_meta(out)
    h = hashlib.sha256()
    for split in ("train", "eval"):
        for shard in meta["shards"][split]:
            h.update(open(os.path.join(out, shard["name"]), "rb").read())
    it = pipeline.make_train_iterator(out, opts, global_batch_size=BATCH, seed=3,
                                      process_index=0, process_count=1)
    evals = pipeline.make_eval_iterator(out, opts, global_batch_size=BATCH, process_index=0,
                                        process_count=1)
    for batch in [next(it) for _ in range(4)] + list(evals):
        for key in sorted(batch):
            h.update(key.encode() + batch[key].dtype.str.encode() + batch[key].tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_unpacked_shards_and_batches_are_unchanged(tmp_path, name):
    opts = marker_options(str(tmp_path), **OPTION_SETS[name])
    out = str(tmp_path / "out")
    meta = prepare_lib.prepare(opts, out, progress=False)
    assert digest(out, opts) == GOLDEN[name]
    # A folder whose meta.json predates packing (none of its keys) reads the same.
    older = {k: v for k, v in meta.items() if k not in PACKING_META_KEYS}
    os.remove(os.path.join(out, folder_lib.META))
    folder_lib.write_meta(epath.Path(out), older)
    assert prepare_lib.prepare(opts, out, progress=False) == folder_lib.read_meta(epath.Path(out))
    assert digest(out, opts) == GOLDEN[name]


def test_unpacked_cache_key_is_unchanged(tmp_path):
    opts = marker_options(str(tmp_path)).replace(input=("/corpus/marker.txt",),
                                                 vocab="")
    _, fingerprint = prepare_lib.cache_key(opts, [{"path": "/corpus/marker.txt",
                                                   "bytes": 1000}])
    assert fingerprint == GOLDEN_FINGERPRINT
