"""Mistakes a user can make with finetune.py: one `error:` line on stderr, exit 2, and
nothing written to the workdir."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import ckpt_helpers as h, finetune_fixtures as fx

LOCK_FILE = "run.lock"  # a workdir lock (it names its last holder) is not a written result
# name -> (extra args ({root} is the fixture folder), expected fragment of the error line)
CASES = {
    "unknown_eval_label": (["--config.data.eval={root}/sports.jsonl"],
                           "sports.jsonl: label 'sports' (1 unknown in all) is not among the "
                           "model's labels (animals, food, weather)"),
    "empty_file": (["--config.data.train={root}/empty.jsonl"],
                   "empty.jsonl: no examples (empty file)"),
    "missing_column": (["--config.data.label_column=topic"],
                       "train.jsonl: no column 'topic' (has text, label); set "
                       "config.data.label_column"),
    "bad_json": (["--config.data.train={root}/bad.jsonl"], "bad.jsonl:2: not a JSON object"),
    "only_train": (["--config.data.eval="], "set both config.data.train and config.data.eval"),
    "vocab_size": (["--config.init.vocab={root}/bigger_vocab.txt"],
                   "bigger_vocab.txt has {big} tokens but {root}/pre was trained with "
                   "vocab_size {small}: a checkpoint of another vocab"),
    "vocab_file": (["--config.init.vocab={root}/renamed_vocab.txt"],
                   "config.init.vocab {root}/renamed_vocab.txt differs from {root}/pre/vocab.txt"),
    "workdir_vocab": ([], "the workdir holds a model of another vocab; use a new --workdir"),
    "workdir_other_start": (["--config.init.from_scratch=True"],
                            "this workdir's model started from the weights of {root}/pre, this "
                            "run asks for random weights, the architecture of {root}/pre"),
    "no_checkpoint": (["--config.init.checkpoint={root}/nothing"],
                      "config.init.checkpoint {root}/nothing: no such directory"),
    "new_model_no_vocab": (["--config.init.checkpoint="], "config.init.vocab is ''"),
    "unknown_field": (["--config.train.foo=1"],
                      "--config.train.foo: the config has no field 'foo'; check the name in "
                      "configs/finetune.py"),
}


# Run as a real process (its exit code and stderr as a user sees them); the others run
# finetune.py's parse_flags + main in the test process.
IN_A_PROCESS = "unknown_field"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    import finetune

    root = tmp_path_factory.mktemp("ftcli")
    fx.write_pretrained(str(root / "pre"))
    fx.write_task(str(root / "train.jsonl"), 12, seed=1)
    fx.write_task(str(root / "test.jsonl"), 6, seed=2)
    fx.write_task(str(root / "sports.jsonl"), 6, seed=3, labels=("animals", "sports"))
    (root / "empty.jsonl").write_text("")
    (root / "bad.jsonl").write_text('{"text": "cat", "label": "animals"}\n{"text": cat}\n')
    fx.write_vocab(str(root / "bigger_vocab.txt"), extra=("zebra",))
    renamed = (root / "pre" / "vocab.txt").read_text().replace("\ncat\n", "\nkat\n")
    (root / "renamed_vocab.txt").write_text(renamed)
    out = {}
    for name, (extra, _) in CASES.items():
        workdir = root / "runs" / name
        workdir.mkdir(parents=True)
        if name == "workdir_vocab":
            fx.write_vocab(str(workdir / "vocab.txt"), extra=("zebra",))
        if name == "workdir_other_start":
            (workdir / "finetune.json").write_text(json.dumps(
                {"labels": ["animals", "food", "weather"], "start": f"the weights of {root}/pre"}))
        before = sorted(os.listdir(workdir))
        args = [f"--workdir={workdir}", *fx.TINY_RUN, f"--config.init.checkpoint={root}/pre",
                f"--config.data.train={root}/train.jsonl",
                f"--config.data.eval={root}/test.jsonl", *(a.format(root=root) for a in extra)]
        if name == IN_A_PROCESS:
            proc = subprocess.run([sys.executable, "finetune.py", *args], cwd=fx.ROOT,
                                  capture_output=True, text=True, timeout=300)
            code, stderr = proc.returncode, proc.stderr
        else:
            code, stderr = h.cli_here(finetune, ["finetune.py", *args])
        after = sorted(set(os.listdir(workdir)) - {LOCK_FILE})
        out[name] = (code, stderr, before, after, root)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_error(results, name):
    rc, stderr, before, after, root = results[name]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    small = len(fx.WORDS) + len(fx.vocab_lib.SPECIAL_TOKENS)
    assert CASES[name][1].format(root=root, small=small, big=small + 1) in lines[0], lines[0]
    assert after == before  # nothing written to the workdir
