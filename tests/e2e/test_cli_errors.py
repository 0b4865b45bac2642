"""Mistakes a user can make on the train.py command line: one `error:` line on stderr, a
non-zero exit, and no file of the (existing, trained) workdir changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from flax_bert.trainer.run_folder import LOCK_FILE
from tests import ckpt_helpers as h

# name -> (extra args, expected fragment of the error line); each runs on a copy of the
# reference workdir unless the name starts with "workdir_".
CASES = {
    "unknown_key": (["--config.train.foo=3"], "--config.train.foo: the config has no field"),
    "wrong_type": (["--config.train.steps=abc"], "--config.train.steps=abc: invalid literal"),
    "other_model": (["--config.model.hidden_size=64"],
                    "config.json has hidden_size=32 but the config asks for 64; drop "
                    "--config.model.hidden_size"),
    "other_model_no_config_json": (["--config.model.hidden_size=64"], "holds another model"),
    "other_vocab": (["--config.model.vocab_size=150"],
                    "config.json has vocab_size=98 but the config asks for 150"),
    "vocab_mismatch_no_config_json": (["--config.model.vocab_size=150"],
                                      "but config.model.vocab_size is 150; set "),
    "heads_no_config_json": (["--config.model.num_attention_heads=3"],
              "hidden_size (32) must be divisible by num_attention_heads (3)"),
    "seq_too_long_no_config_json": (["--config.model.max_position_embeddings=16"],
                                    "config.data.max_seq_length (32) exceeds the model's "
                                    "max_position_embeddings (16)"),
    "phase1_not_shorter": (["--config.train.phase1_fraction=0.4"],
                           "config.train.phase1_seq_length (32) must be shorter than "
                           "config.data.max_seq_length (32)"),
    "steps_per_call": (["--config.train.steps_per_call=0"],
                       "config.train.steps_per_call=0 is out of range; set it to a value >= 1"),
    # Choice fields are checked before anything runs (dropout_impl was unused at rate 0).
    "dtype_choice": (["--config.train.dtype=fp8"],
                     "config.train.dtype='fp8' is unknown; use one of: float32, bfloat16"),
    "dropout_choice": (["--config.train.dropout_impl=bernoulli"],
                       "config.train.dropout_impl='bernoulli' is unknown; use one of: hash, jax"),
    "scan_choice": (["--config.train.scan_layers=True"],
                    "config.train.scan_layers='True' is unknown; use one of: auto, scan, unroll"),
    "workdir_is_file": ([], "is a file; pass a directory"),
    "workdir_not_creatable": ([], "cannot be created"),
}


def _files(path: str) -> dict[str, str]:
    """Hashes of the files under `path`, but the lock file (it names the last holder)."""
    return {k: v for k, v in h.tree_hash(path).items() if os.path.basename(k) != LOCK_FILE}


# Run as a real process (its exit code and stderr as a user sees them); the others run
# train.py's parse_flags + main in the test process (the same code, no start-up).
IN_A_PROCESS = "unknown_key"


@pytest.fixture(scope="module")
def results(setup, reference) -> dict:
    """Runs every case; returns name -> (exit code, stderr, hashes before, hashes after)."""
    import train

    out = {}
    for name, (extra, _) in CASES.items():
        case_dir = setup["root"] / "cli" / name
        case_dir.mkdir(parents=True)
        if name.startswith("workdir_"):
            target = str(case_dir / "file.txt")
            with open(target, "w") as f:
                f.write("user data\n")
            workdir = target if name == "workdir_is_file" else os.path.join(target, "sub")
            watched = str(case_dir)
        else:
            workdir = watched = str(case_dir / "w")
            shutil.copytree(reference, workdir)
            if name.endswith("_no_config_json"):
                os.remove(os.path.join(workdir, "config.json"))
        before = _files(watched)
        args = setup["args"] + extra
        if name == IN_A_PROCESS:
            proc = subprocess.run(h.command(workdir, args), cwd=h.ROOT,
                                  env=h.env(8, setup["cache"]), capture_output=True, text=True,
                                  timeout=300)
            code, stderr = proc.returncode, proc.stderr
        else:
            code, stderr = h.cli_here(train, ["train.py", f"--workdir={workdir}", *args])
        out[name] = (code, stderr, before, _files(watched))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_error(results, name):
    rc, stderr, before, after = results[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert CASES[name][1] in lines[0], lines[0]
    assert after == before  # nothing in the workdir (or the user's file) changed


def test_a_size_file_loads_from_another_directory(tmp_path):
    """configs/tiny.py imports configs/default.py: train.py run from elsewhere with the
    file's path still reads it (its out-of-range override is the one error)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(h.ROOT, "train.py"), "--config", os.path.join(h.ROOT, "configs", "tiny.py"), f"--workdir={tmp_path / 'w'}",
         "--config.train.steps=-1"],
        cwd=tmp_path, env=h.env(1, None), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("error: config.train.steps=-1 is out of range; set it to a "
                                   "value >= 1")
    assert not (tmp_path / "w").exists()


def test_no_libtpu_noise_without_a_tpu(tmp_path):
    """With libtpu installed (the test extra has it) and no TPU attached, a run that starts
    jax's backends (here to count the devices for config.mesh) prints only its own line."""
    env = {k: v for k, v in h.env(1, None).items()
           if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
    proc = subprocess.run(
        [sys.executable, os.path.join(h.ROOT, "train.py"), f"--workdir={tmp_path / 'w'}",
         "--config.mesh.data=3"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: config.mesh {'data': 3, 'fsdp': 1, 'tensor': 1} needs 3 devices, but there "
        "are 1; make the sizes' product 1 (or set one to -1)"]
