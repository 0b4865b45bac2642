"""The range table of numeric config fields (flax_bert/config_ranges.py): every numeric field
of every config in configs/ has an entry, every config's own values pass it, an
out-of-range value of any field stops its job with one UserError naming the field before
anything is written, and train.py turns the usual mistakes into one `error:` line, exit 2,
with nothing prepared."""

from __future__ import annotations

import glob
import importlib
import math
import os
import subprocess

import pytest

from flax_bert import config_ranges
from flax_bert.data.config import DataOptions
from flax_bert.errors import UserError
from flax_bert.tasks import pretraining
from flax_bert.trainer import sharding
from tests import ckpt_helpers as h

CONFIG_FILES = sorted(os.path.basename(path)[:-3]
                      for path in glob.glob(os.path.join(h.ROOT, "configs", "*.py"))
                      if not path.endswith("__init__.py"))


def get_config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def train_and_evaluate(config):
    """The function the CLI runs for `config`: pretraining, or finetune.py's job."""
    if "job" not in config:
        return pretraining.train_and_evaluate
    import finetune

    return importlib.import_module(finetune.JOBS[config.job][0]).train_and_evaluate


def out_of_range(rule: config_ranges.Range, value, fields: dict):
    """A value of `value`'s type that `rule` refuses in a config of `fields`."""
    candidates = [rule.low - 1, rule.low - 2, rule.low, rule.high, rule.high + 1]
    if isinstance(value, float):
        candidates += [math.nan, math.inf, -math.inf]
    for c in candidates:
        if isinstance(value, int):
            if not math.isfinite(c) or not float(c).is_integer():
                continue
            c = int(c)
        else:
            c = float(c)
        if not rule.contains(c, fields):
            return c
    raise AssertionError(f"{rule} refuses no value")


def test_config_files_found():
    assert {"default", "tiny", "base", "large", "finetune", "glue", "squad"} <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_numeric_field_has_a_range(name):
    missing = [f for f, _ in config_ranges.numeric_fields(get_config(name))
               if f not in config_ranges.RANGES]
    assert not missing, f"configs/{name}.py: add these fields to config_ranges.RANGES"


def test_no_range_without_a_field():
    used = {f for name in CONFIG_FILES for f, _ in config_ranges.numeric_fields(get_config(name))}
    assert set(config_ranges.RANGES) - used == set()


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_values_pass(name):
    config = get_config(name)
    config_ranges.check(config)
    fields = dict(config_ranges.numeric_fields(config))
    for field, value in fields.items():
        assert config_ranges.RANGES[field].contains(value, fields), field


def test_zero_means_off_or_all():
    """Fields whose comments give 0 a meaning accept it; so does mesh's -1."""
    config = get_config("default")
    for section, field in (("model", "vocab_size"), ("train", "eval_every"),
                           ("train", "eval_batches"), ("train", "final_eval_batches"),
                           ("train", "stop_after"), ("train", "phase1_fraction"),
                           ("train", "max_consecutive_nonfinite"), ("optimizer", "warmup_steps"),
                           ("optimizer", "grad_clip_norm"), ("optimizer", "weight_decay"),
                           ("data", "num_workers"), ("data", "worker_count"),
                           ("data", "prefetch"), ("data", "eval_fraction")):
        config[section][field] = type(config[section][field])(0)
    config.mesh.fsdp = -1
    config.mesh.data = 2
    config_ranges.check(config)
    for name in ("glue", "squad"):  # 0 steps: train.epochs over the train set
        config = get_config(name)
        config.train.steps = 0
        config_ranges.check(config)
    config = get_config("finetune")  # no train.epochs: 0 steps means nothing
    config.train.steps = 0
    with pytest.raises(UserError, match=r"^config.train.steps=0 is out of range; set it to a "
                                        r"value >= 1$"):
        config_ranges.check(config)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_each_field_out_of_range_stops_the_job(name, tmp_path):
    """Each numeric field set out of its range: the job (as the CLI runs it) raises one
    UserError naming the field and its range, before its workdir is even made."""
    base = get_config(name)
    run = train_and_evaluate(base)
    fields = dict(config_ranges.numeric_fields(base))
    for i, (field, value) in enumerate(fields.items()):
        rule = config_ranges.RANGES[field]
        bad = out_of_range(rule, value, fields)
        config = get_config(name)
        *path, last = field.split(".")
        section = config
        for p in path:
            section = section[p]
        section[last] = bad
        workdir = str(tmp_path / f"w{i}")
        with pytest.raises(UserError) as e:
            run(config, workdir)
        message = str(e.value)
        assert message == (f"config.{field}={bad!r} is out of range; set it to "
                           f"{rule.describe(fields)}"), (field, message)
        assert "\n" not in message
        assert not os.path.exists(workdir), field


def test_messages():
    config = get_config("default")
    config.train.steps = -1
    with pytest.raises(UserError, match=r"^config.train.steps=-1 is out of range; set it to a "
                                        r"value >= 1$"):
        config_ranges.check(config)
    config = get_config("squad")
    config.optimizer.warmup_fraction = 1.0
    with pytest.raises(UserError, match=r"^config.optimizer.warmup_fraction=1.0 is out of "
                                        r"range; set it to a value in \[0, 1\)$"):
        config_ranges.check(config)
    config.optimizer.warmup_fraction, config.train.steps = 0.1, -1
    with pytest.raises(UserError, match=r"set it to a value >= 1, or 0 \(train.epochs"):
        config_ranges.check(config)
    config = get_config("default")
    config.mesh.tensor = 0
    with pytest.raises(UserError, match=r"^config.mesh.tensor=0 is out of range; set it to a "
                                        r"value >= 1, or -1 \(the rest of the devices\)$"):
        config_ranges.check(config)
    config.mesh.tensor = 1
    config.squad_like = 5  # a field the table does not know is left alone
    config_ranges.check(config)


def test_prepare_options_use_the_table():
    """The prepare CLIs' options are checked against the same table (their config.data)."""
    defaults = DataOptions()
    defaults.check()
    with pytest.raises(UserError, match=r"^config.data.dupe_factor=0 is out of range; set it "
                                        r"to a value >= 1$"):
        defaults.replace(dupe_factor=0).check()
    with pytest.raises(UserError, match=r"^config.data.masked_lm_prob=1.0 is out of range"):
        defaults.replace(masked_lm_prob=1.0).check()
    with pytest.raises(UserError, match=r"^config.data.mask_token_prob \(0.8\) \+ "
                                        r"random_token_prob \(0.3\) exceed 1"):
        defaults.replace(random_token_prob=0.3).check()


def test_mesh_against_the_device_count():
    mesh = get_config("default").mesh
    assert sharding.mesh_shape(mesh, 8) == (8, 1, 1)
    mesh.fsdp = 4
    assert sharding.mesh_shape(mesh, 8) == (2, 4, 1)
    with pytest.raises(UserError, match=r"8 devices do not split into 3 x the rest"):
        mesh.fsdp = 3
        sharding.mesh_shape(mesh, 8)
    mesh.data, mesh.fsdp = 3, 1
    with pytest.raises(UserError, match=r"^config.mesh \{'data': 3, 'fsdp': 1, 'tensor': 1\} "
                                        r"needs 3 devices, but there are 1; "):
        sharding.mesh_shape(mesh, 1)
    mesh.data, mesh.fsdp = -1, -1
    with pytest.raises(UserError, match=r"at most one size may be -1"):
        sharding.mesh_shape(mesh, 8)


# flag -> the field its error line names
CLI_CASES = {"--config.train.steps=-1": "config.train.steps=-1 is out of range",
             "--config.train.global_batch_size=0":
                 "config.train.global_batch_size=0 is out of range",
             "--config.optimizer.learning_rate=-1": "config.optimizer.learning_rate=-1.0 is out "
                                                    "of range; set it to a value > 0",
             "--config.mesh.data=3": "config.mesh {'data': 3, 'fsdp': 1, 'tensor': 1} needs 3 "
                                     "devices, but there are 1"}


def test_cli_mistakes_before_prepare(tmp_path):
    """python train.py (configs/default.py) on one device with each mistake: one `error:`
    line naming the field, exit 2, no prepared/ folder in the workdir."""
    procs = {}
    for i, flag in enumerate(CLI_CASES):
        workdir = str(tmp_path / f"w{i}")
        procs[flag] = (workdir, subprocess.Popen(
            h.command(workdir, [flag]), cwd=h.ROOT, env=h.env(1, str(tmp_path / "cache")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for flag, (workdir, proc) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (flag, stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (flag, stderr[-3000:])
        assert CLI_CASES[flag] in lines[0], lines[0]
        assert not os.path.exists(os.path.join(workdir, "prepared")), flag
