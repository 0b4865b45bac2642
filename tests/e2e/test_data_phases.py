"""Prepared data for every phase of a run: `prepare --config` writes the main data and phase
1's (in its phase1/), train.py with config.data.prepared_dir trains each phase on them and
writes nothing into or beside the folder; a folder without phase 1's data, or prepared
with other settings, is a one-line error naming the fields and the command that fixes it."""

from __future__ import annotations

import os
import random
import shlex

import numpy as np
import pytest

from flax_bert import run_config
from flax_bert.data import (pipeline, prepare as prepare_lib, pretraining_data as inputs,
                            vocab as vocab_lib)
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError
from tests import ckpt_helpers as h

LETTERS = "qxz"  # the user corpus's only letters: text of any other corpus is [UNK] here
TINY_CONFIG = os.path.join(h.ROOT, "configs", "tiny.py")
# A two-phase run of configs/tiny.py (packed, phase 1 the first 90% of the steps), small.
CONFIG = ["--config", TINY_CONFIG, "--config.data.vocab_size=200",
          "--config.data.max_seq_length=64", "--config.data.max_predictions_per_seq=10",
          "--config.data.eval_fraction=0.25", "--config.data.dupe_factor=2",
          "--config.data.num_workers=1", "--config.train.phase1_seq_length=32"]
TRAIN = ["--config.model.num_hidden_layers=1", "--config.model.hidden_size=16",
         "--config.model.num_attention_heads=1", "--config.model.intermediate_size=16",
         "--config.train.steps=5", "--config.train.global_batch_size=8",
         "--config.train.phase1_batch_size=8", "--config.train.eval_every=0",
         "--config.train.final_eval_batches=1", "--config.train.log_every=5",
         "--config.train.tensorboard=False", "--config.checkpoint.every=5"]


def user_corpus(path: str, docs: int = 16, sentences: int = 30) -> None:
    rng = random.Random(0)
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))
             for _ in range(300)]
    text = "\n\n".join("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12)))
                                 + "." for _ in range(sentences)) for _ in range(docs))
    with open(path, "w") as f:
        f.write(text + "\n")


def listing(folder: str) -> dict:
    """The folder's files and hashes, and its parent's entries."""
    return {"files": h.tree_hash(folder), "parent": sorted(os.listdir(os.path.dirname(folder)))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("phases")
    corpus = str(root / "user.txt")
    user_corpus(corpus)
    out = str(root / "data" / "prepared")
    assert prepare_lib.main(CONFIG + ["--input", corpus, "--output", out]) == 0
    return {"root": root, "corpus": corpus, "out": out}


def train_cli(args: list[str]) -> tuple[int, str]:
    import train

    return h.cli_here(train, ["train.py", *args])


def test_a_run_on_prepared_data_trains_every_phase_on_its_documents(prepared, tmp_path,
                                                                    monkeypatch):
    out, corpus = prepared["out"], prepared["corpus"]
    metas = [pipeline.load_meta(out), pipeline.load_meta(os.path.join(out, "phase1"))]
    assert [(m["max_seq_length"], m["max_predictions_per_seq"], m["packed"]) for m in metas] == [
        (64, 10, True), (32, 5, True)]  # phase 1's predictions scaled: ceil(10 * 32 / 64)
    vocab = vocab_lib.read_vocab(os.path.join(out, "vocab.txt"))
    tokens = [t for t in vocab if t not in vocab_lib.SPECIAL_TOKENS]
    assert set("".join(tokens)) <= set(LETTERS + ".#")  # other text would be [UNK]

    fed = []  # (folder, batch) of every train batch the pipeline made
    made = pipeline._Batches.__call__

    def record(self, k, _=None):
        batch = made(self, k, _)
        if self.train:
            fed.append((self.dir, batch))
        return batch

    monkeypatch.setattr(pipeline._Batches, "__call__", record)
    before = listing(out)
    code, stderr = train_cli(CONFIG + TRAIN + [f"--config.data.prepared_dir={out}",
                                               f"--workdir={tmp_path / 'w'}"])
    assert code == 0, stderr[-3000:]
    assert listing(out) == before  # nothing written into or beside the folder

    lengths = {}
    for folder, batch in fed:
        assert pipeline.load_meta(folder)["options"]["input"] == [corpus]
        lengths.setdefault(batch["input_ids"].shape[1], set()).add(folder)
        ids = batch["input_ids"].copy()  # [b, L]
        rows, _ = np.nonzero(batch["masked_weights"] > 0)
        ids[rows, batch["masked_positions"][batch["masked_weights"] > 0]] = 0  # masked: any
        seen = [vocab[i] for i in ids[ids > 0]]
        assert "[UNK]" not in seen
        assert set("".join(seen)) <= set(LETTERS + ".#[]CLSEP"), folder
    assert lengths == {32: {os.path.join(out, "phase1")}, 64: {out}}


def test_prepared_dir_without_phase1_data_names_the_command_and_writes_nothing(
        prepared, tmp_path):
    corpus = prepared["corpus"]
    out = str(tmp_path / "data" / "one_phase")
    assert prepare_lib.main(CONFIG + ["--config.train.phase1_fraction=0", "--input", corpus,
                                      "--output", out]) == 0
    assert not os.path.exists(os.path.join(out, "phase1"))
    before = listing(out)
    code, stderr = train_cli(CONFIG + TRAIN + [f"--config.data.prepared_dir={out}",
                                               f"--workdir={tmp_path / 'w'}"])
    assert code == 2 and stderr.count("\n") == 1, stderr[-3000:]
    assert stderr.startswith(f"error: {out} has no phase-1 data")
    assert listing(out) == before
    assert "Traceback" not in stderr
    command = stderr.split("vocab with: ", 1)[1].split(" (the data in", 1)[0]
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "flax_bert.data.prepare"] and args[-2:] == [
        "--output", out]
    # The named command adds phase 1's data and keeps the folder's own as it is.
    assert prepare_lib.main(args[3:] + ["--num-workers", "1"]) == 0
    after = listing(out)["files"]
    assert {k: v for k, v in after.items() if not k.startswith("phase1")} == before["files"]
    options = DataOptions.from_config(run_config.load(CONFIG, "prepare").data)
    inputs.check_prepared(options.replace(prepared_dir=out), out, 32)


def test_settings_that_differ_name_the_fields_and_the_flags(prepared):
    out = prepared["out"]
    options = DataOptions.from_config(run_config.load(CONFIG, "prepare").data)
    inputs.check_prepared(options, out, 32)  # the config it was prepared with
    longer = options.replace(max_seq_length=128, max_predictions_per_seq=20)
    with pytest.raises(UserError) as e:
        inputs.check_prepared(longer, out, 32)
    message = str(e.value)
    assert message.startswith(f"{out}/meta.json: the prepared data differs from the run's "
                              f"config.data: max_seq_length=64 (config: 128), "
                              f"max_predictions_per_seq=10 (config: 20); train on it as "
                              f"prepared with --config.data.max_seq_length=64 "
                              f"--config.data.max_predictions_per_seq=10, or prepare")
    remake = message.split("config's data with: ", 1)[1]  # flags where not DataOptions()'
    assert remake.startswith(f"python -m flax_bert.data.prepare --input {prepared['corpus']} ")
    for flag in ("--vocab-size 200", "--dupe-factor 2", "--packing", "--eval-fraction 0.25",
                 "--phase1-seq-length 32 --output NEW_DIR"):
        assert flag in remake, flag
    assert "max-seq-length" not in remake and "max-predictions-per-seq" not in remake
    assert remake.endswith("--output NEW_DIR and train with --config.data.prepared_dir=NEW_DIR")
    assert "\n" not in message
    with pytest.raises(UserError) as e:
        inputs.check_prepared(options.replace(packing=False), out, 32)
    assert "packing=True (config: False)" in str(e.value)
    assert "--config.data.packing=True" in str(e.value)
    with pytest.raises(UserError) as e:  # phase 1 at another length
        inputs.check_prepared(options, out, 16)
    message = str(e.value)
    assert message.startswith(f"{out}/phase1/meta.json: phase 1's data is not what this run "
                              f"needs")
    assert "max_predictions_per_seq=5 (wanted: 3), max_seq_length=32 (wanted: 16)" in message
    assert message.endswith(f"--phase1-seq-length 16 --output {out}, or train phase 1 on it "
                            f"with --config.train.phase1_seq_length=32")
    # Without --config the flags of config.data's fields describe the folder; with --config
    # the config does, and such a flag is refused.
    assert prepare_lib.main(CONFIG + ["--max-seq-length", "128", "--input", "x",
                                      "--output", out]) == 2
    assert prepare_lib._data_flags_given(["--num-workers", "1", "--no-packing", "--input", "x"]
                                         ) == ["packing"]  # --num-workers goes with --config
