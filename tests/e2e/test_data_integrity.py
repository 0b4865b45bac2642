"""Prepared-data integrity: every file truncated in turn and altered in turn is one
UserError naming it (sizes at open, a shard's checksum when it is first read); old .npy
folders and a crash before meta.json are refused with one line."""

import os
import shutil

import numpy as np
import pytest

from tests import ckpt_helpers as h
from tests.data_fixtures import prepared
from flax_bert.data import folder as folder_lib, pipeline
from flax_bert.errors import UserError

SHARD_MB = 0.01  # ~10 kB of text per shard: the marker corpus makes several shards


def _read_everything(out: str, opts) -> None:
    """Open the folder and read every record of both splits through the pipeline."""
    meta = pipeline.load_meta(out)
    n = meta["num_train_examples"]
    it = pipeline.make_train_iterator(out, opts, global_batch_size=n, seed=0, process_index=0,
                                      process_count=1)
    batch = next(it)  # one batch of every train example
    assert batch["input_ids"].shape[0] == n
    list(pipeline.make_eval_iterator(out, opts, global_batch_size=8, process_index=0,
                                     process_count=1))


def _damage(path: str, how: str) -> None:
    data = bytearray(open(path, "rb").read())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # one byte changed in the middle: the size stays the same
        data[len(data) // 2] ^= 0x5A
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out, _, meta, opts = prepared(tmp_path_factory, shard_mb=SHARD_MB)
    assert len(meta["shards"]["train"]) >= 3 and len(meta["shards"]["eval"]) >= 1
    _read_everything(out, opts)  # intact: reads without an error
    return out, meta, opts


@pytest.mark.parametrize("how", ["truncated", "altered"])
def test_every_damaged_file_is_a_one_line_error_naming_it(sharded, tmp_path, how):
    out, meta, opts = sharded
    names = sorted(meta["files"]) + [folder_lib.META]
    assert len(names) == len(os.listdir(out))  # every file of the folder is tried
    for name in names:
        copy = str(tmp_path / f"{how}-{name}")
        shutil.copytree(out, copy)
        _damage(os.path.join(copy, name), how)
        with pytest.raises(UserError) as err:
            _read_everything(copy, opts)
        message = str(err.value)
        assert os.path.join(copy, name) in message and "\n" not in message, message
        assert "re-run prepare" in message and f"delete {copy}" in message
        shutil.rmtree(copy)


def test_missing_shard_and_old_npy_folder(sharded, tmp_path):
    out, meta, opts = sharded
    copy = str(tmp_path / "missing")
    shutil.copytree(out, copy)
    gone = meta["shards"]["train"][1]["name"]
    os.remove(os.path.join(copy, gone))
    with pytest.raises(UserError, match=f"{gone}: missing; re-run prepare"):
        pipeline.load_meta(copy)
    old = tmp_path / "old"
    (old / "train").mkdir(parents=True)
    np.save(old / "train" / "input_ids.npy", np.zeros((2, 8), np.uint16))
    with pytest.raises(UserError, match="older version .*npy.*delete the folder"):
        pipeline.load_meta(str(old))
    (old / "meta.json").write_text('{"vocab_size": 8}')  # a version-1 meta.json
    with pytest.raises(UserError, match="older version .*npy"):
        pipeline.load_meta(str(old))


def test_train_cli_reports_an_altered_shard_in_one_line(sharded, tmp_path):
    """Through train.py's parse_flags + main (in this process): the shard's checksum,
    checked when the pipeline first reads it, is the last line, exit 2, no traceback."""
    import train

    out, meta, _ = sharded
    copy = str(tmp_path / "cli")
    shutil.copytree(out, copy)
    name = meta["shards"]["train"][0]["name"]
    _damage(os.path.join(copy, name), "altered")
    code, stderr = h.cli_here(train, [
        "train.py", "--config", "configs/default.py", "--workdir", str(tmp_path / "w"),
        f"--config.data.prepared_dir={copy}", "--config.model.num_hidden_layers=1",
        "--config.model.hidden_size=16", "--config.model.num_attention_heads=1",
        "--config.model.intermediate_size=16",
        f"--config.data.max_seq_length={meta['max_seq_length']}",
        f"--config.data.max_predictions_per_seq={meta['max_predictions_per_seq']}",
        "--config.train.phase1_fraction=0", "--config.train.global_batch_size=8",
        "--config.train.steps=2", "--config.train.steps_per_call=1",
        "--config.train.tensorboard=False"])
    assert code == 2, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and name in lines[-1] and "altered" in lines[-1]
    assert "Traceback" not in stderr
