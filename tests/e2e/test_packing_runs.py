"""Packed pretraining through train.py: a run killed with -9 resumes bitwise, and the
held-out numbers are the same packed or not."""

from __future__ import annotations

import os
import random
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_bert import losses
from flax_bert.data import pipeline, prepare
from flax_bert.data.config import DataOptions
from flax_bert.model import BertForPreTraining
from flax_bert.tasks.pretraining import PretrainingObjective
from flax_bert.trainer import checkpoint
from tests import ckpt_helpers as h
from tests.e2e.test_checkpoint import _assert_same_final_state, _wait

SEQ = 64  # the tiny corpus's pairs: ~1.2 of them a row at 64 tokens


@pytest.fixture(scope="module")
def packed(setup) -> dict:
    """The setup corpus prepared packed and unpacked at SEQ tokens with one vocab; the
    train.py arguments of a packed run; its uninterrupted reference run (in this process)."""
    base = DataOptions().replace(
        input=(str(setup["root"] / "corpus.txt"),),
        vocab=os.path.join(setup["prepared"], "vocab.txt"), max_seq_length=SEQ,
        max_predictions_per_seq=10, num_workers=1, eval_fraction=0.2)
    folders = {}
    for packing in (True, False):
        folders[packing] = str(setup["root"] / f"prepared-{SEQ}-{packing}")
        prepare.prepare(base.replace(packing=packing), folders[packing], progress=False)
    replaced = ("--config.data.prepared_dir", "--config.data.max_seq_length")
    args = [a for a in setup["args"] if a.split("=")[0] not in replaced] + [
        f"--config.data.prepared_dir={folders[True]}", f"--config.data.max_seq_length={SEQ}",
        "--config.data.max_predictions_per_seq=10", "--config.data.packing=True",
        "--config.data.eval_fraction=0.2"]
    reference = str(setup["root"] / "packed-reference")
    h.train_here(reference, args)
    return {"folders": folders, "args": args, "reference": reference, "options": base}


def test_packed_run_killed_then_resumed_is_bitwise_the_same(setup, packed):
    meta = pipeline.load_meta(packed["folders"][True])
    assert meta["packed"] and meta["num_train_pairs"] > 1.1 * meta["num_train_rows"]
    workdir = str(setup["root"] / "packed-killed")
    metrics = os.path.join(workdir, "metrics.jsonl")
    proc = subprocess.Popen(h.command(workdir, packed["args"]), cwd=h.ROOT,
                            env=h.env(8, setup["cache"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kill_at = random.Random(2).randint(3, 9)
    rows = lambda: sum(1 for _ in open(metrics)) if os.path.exists(metrics) else 0  # noqa
    assert _wait(proc, lambda: rows() >= kill_at)
    proc.kill()
    proc.wait()
    time.sleep(0.1)
    out, _ = h.train_here(workdir, packed["args"])
    assert "resumed from" in out
    _assert_same_final_state(workdir, packed["reference"])
    assert h.train_rows(workdir) == h.train_rows(packed["reference"])


def test_held_out_numbers_are_the_same_packed_or_not(setup, packed):
    """The same params on the held-out split prepared packed and unpacked (the same pairs
    and static masks, in other rows): the same MLM and NSP sums."""
    model_config = checkpoint.load_config(packed["reference"])
    params = h.restore_item(packed["reference"], h.STEPS, "params")
    model = BertForPreTraining(model_config)
    eval_step = jax.jit(PretrainingObjective(model).eval_step)
    sums = {}
    for packing, folder in packed["folders"].items():
        totals = None
        for batch in pipeline.make_eval_iterator(folder, packed["options"].replace(
                packing=packing), global_batch_size=8, process_index=0, process_count=1):
            out = eval_step(params, batch)
            totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
        sums[packing] = losses.summarize(jax.device_get(totals)) | {
            "pairs": float(totals["nsp_count"]), "predictions": float(totals["mlm_count"])}
    assert sums[True]["pairs"] == pipeline.load_meta(packed["folders"][True])["num_eval_pairs"]
    for key, value in sums[False].items():
        np.testing.assert_allclose(sums[True][key], value, rtol=1e-5, err_msg=key)
