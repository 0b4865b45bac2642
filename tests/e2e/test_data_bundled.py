"""The bundled corpus prepares with the default config (what train.py does on a first run)."""

import os

import numpy as np

from configs.default import get_config
from tests.data_fixtures import read_split
from flax_bert.data import pipeline, prepare as prepare_lib
from flax_bert.data.config import DataOptions

BUNDLED_DOCUMENTS = 404  # corpus/README.md: 7 books, one document per chapter
BUNDLED_EVAL_DOCUMENTS = 55  # the hash split at eval_fraction 0.15 (configs/default.py)


def test_default_config_prepares_the_bundled_corpus(tmp_path):
    config = get_config()
    opts = DataOptions.from_config(config.data)
    out = str(tmp_path / "prepared")
    meta = prepare_lib.prepare(opts, out)
    assert meta["vocab_size"] == config.data.vocab_size
    assert meta["num_documents"] == BUNDLED_DOCUMENTS
    assert meta["num_eval_documents"] == BUNDLED_EVAL_DOCUMENTS
    assert meta["max_seq_length"] == config.data.max_seq_length
    assert meta["num_train_examples"] > 10 * config.train.global_batch_size
    assert len(meta["source_files"]) == 7
    stamp = os.path.getmtime(os.path.join(out, "meta.json"))
    assert prepare_lib.prepare(opts, out) == meta  # cached: no-op
    assert os.path.getmtime(os.path.join(out, "meta.json")) == stamp
    assert pipeline.load_meta(out) == meta
    it = pipeline.make_train_iterator(out, opts, global_batch_size=8, seed=0,
                                      process_index=0, process_count=1)
    batch = next(it)
    assert batch["input_ids"].shape == (8, config.data.max_seq_length)
    assert np.all(batch["input_ids"] < meta["vocab_size"])
    labels = read_split(out, "train")["next_sentence_label"]
    # ~53% random: as in google-research/bert, a one-sentence chunk always gets a random B.
    assert abs(labels.mean() - 0.5) < 0.04
