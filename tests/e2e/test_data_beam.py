"""Beam DirectRunner (2 worker processes) writes the local prepare's folder, file for file."""

import dataclasses
import os

import pytest

from tests.data_fixtures import prepared

beam = pytest.importorskip("apache_beam", reason="apache-beam not installed: pip install -e '.[beam]'")

from flax_bert.data import beam_prepare  # noqa: E402

SHARD_MB = 0.01  # several shards, so the two workers share them


def test_direct_runner_equals_local_prepare(tmp_path_factory):
    out, _, _, opts = prepared(tmp_path_factory, shard_mb=SHARD_MB, dynamic_masking=False)
    beam_out = str(tmp_path_factory.mktemp("beam"))
    vocab_opts = dataclasses.replace(opts, vocab=os.path.join(out, "vocab.txt"))
    local_out = str(tmp_path_factory.mktemp("local"))  # the same vocab given to both
    from flax_bert.data import prepare as prepare_lib

    local = prepare_lib.prepare(vocab_opts, local_out, progress=False)
    meta = beam_prepare.run(vocab_opts, beam_out, ["--runner", "DirectRunner",
                                                    "--direct_num_workers", "2",
                                                    "--direct_running_mode", "multi_processing"])
    assert len(local["shards"]["train"]) >= 3
    assert meta == local  # names, record counts, sizes and checksums of every file
    for name in local["files"]:
        with open(os.path.join(local_out, name), "rb") as a, \
                open(os.path.join(beam_out, name), "rb") as b:
            assert a.read() == b.read(), name


def test_user_error_in_a_worker_is_one_line(tmp_path_factory, capsys):
    """A binary input found by a worker process: our one-line error and exit 2 (not the
    runner's wrapped exception), no meta.json, and no error file left behind."""
    out, _, _, opts = prepared(tmp_path_factory, shard_mb=SHARD_MB, dynamic_masking=False)
    bad = tmp_path_factory.mktemp("bad") / "bad.txt"
    bad.write_bytes(b"some text\n\x00\x01\x02 binary\n")
    dest = str(tmp_path_factory.mktemp("beam_bad"))
    code = beam_prepare.main([
        "--input", *opts.input, str(bad), "--output", dest,
        "--vocab", os.path.join(out, "vocab.txt"), "--runner", "DirectRunner",
        "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"error: {bad}: binary data (a NUL byte at offset 10), not text; "
                    f"remove it from --input")
    assert "meta.json" not in os.listdir(dest) and beam_prepare.ERRORS not in os.listdir(dest)
