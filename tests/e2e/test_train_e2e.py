"""train.py end to end on a tiny corpus: metrics.jsonl, TensorBoard events, plots, and
continued pretraining of an imported Hugging Face checkpoint, exported back."""

import glob
import io
import json
import os
import re
import shutil

import numpy as np
import pytest

from tests import ckpt_helpers as h

from tests.data_fixtures import marker_corpus

TINY = ["--config.model.hidden_size=32", "--config.model.num_hidden_layers=1",
        "--config.model.num_attention_heads=4", "--config.model.intermediate_size=64",
        "--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
        "--config.data.vocab_size=300", "--config.data.eval_fraction=0.2",
        "--config.data.num_workers=1", "--config.train.global_batch_size=16",
        "--config.train.log_every=4", "--config.train.eval_every=8",
        "--config.train.eval_batches=2", "--config.optimizer.warmup_steps=5",
        "--config.checkpoint.every=8", "--config.train.phase1_seq_length=16",
        "--config.train.phase1_batch_size=32"]  # phase1_fraction as in the default run
# Logs, evals, checkpoints and the phase switch (step 8 of 20) fall on multiples of the
# default steps_per_call (4): every call has 4 steps, one compile per phase.


def train(workdir, *extra) -> str:
    """train.py's parse_flags + main in this process; returns what it printed."""
    import train as train_cli

    out = io.StringIO()
    code, stderr = h.cli_here(train_cli, ["train.py", f"--workdir={workdir}", *TINY, *extra],
                              out)
    assert code == 0, stderr[-3000:]
    return out.getvalue() + stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("corpus") / "corpus.txt")
    marker_corpus(path, num_docs=10, sentences=40)
    return path


def test_train_writes_metrics_events_and_plots(corpus, tmp_path):
    workdir = tmp_path / "run"
    log = train(workdir, f"--config.data.input={corpus}", "--config.train.steps=20")
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_rows = [r for r in rows if r["split"] == "train"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train_rows] == [4, 8, 12, 16, 20]
    assert [r["step"] for r in eval_rows] == [8, 16, 20]
    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy",
                "learning_rate", "grad_norm", "tokens_per_sec"):
        assert all(np.isfinite(r[key]) for r in train_rows), key
    assert all("mlm_perplexity" in r for r in eval_rows)
    # Periodic evals read eval_batches (2) batches of 16; the final one the whole split,
    # and reports its time and the final save's.
    assert [r["examples"] for r in eval_rows[:2]] == [32, 32]
    assert eval_rows[-1]["examples"] > 32
    assert eval_rows[-1]["eval_seconds"] > 0 and eval_rows[-1]["save_seconds"] > 0
    assert "eval_seconds" not in eval_rows[0]
    assert re.search(r"final eval \d+\.\d s, final save \d+\.\d s", log)
    assert train_rows[-1]["mlm_loss"] < train_rows[0]["mlm_loss"]
    assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))
    for name in ("loss.png", "accuracy.png", "config.json", "vocab.txt"):
        assert (workdir / name).stat().st_size > 0, name
    assert {"8", "16", "20"} <= set(os.listdir(workdir / "checkpoints"))
    # Phase 1 (the default's first 40% of steps) trained on 16-token examples, 32 a batch.
    meta = json.load(open(workdir / "prepared" / "phase1" / "meta.json"))
    assert (meta["max_seq_length"], meta["max_predictions_per_seq"]) == (16, 3)
    assert (workdir / "prepared" / "phase1" / "vocab.txt").read_text() == (workdir / "vocab.txt").read_text()
    assert "phase 1: steps 1-8 on 16-token examples" in log


# train.py flags of the continued-pretraining runs: data and loop only, no --config.model.*.
CONTINUE = ["--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
            "--config.data.eval_fraction=0.2", "--config.data.num_workers=1",
            "--config.train.global_batch_size=16", "--config.train.log_every=4",
            "--config.train.eval_every=0", "--config.train.eval_batches=2",
            "--config.optimizer.warmup_steps=2", "--config.train.steps=8",
            "--config.train.phase1_fraction=0", "--config.train.tensorboard=False"]


def test_continued_pretraining_of_an_hf_model_of_another_size(corpus, tmp_path):
    """`python -m flax_bert.hf import` of a transformers BertModel (no heads, like
    sentence-transformers' MiniLM) whose size is not the config's, then `python train.py
    --workdir W` with no --config.model flag: the workdir's model is continued (its
    config.json), the MLM/NSP heads fresh; the export loads in transformers. A
    --config.model flag that contradicts it is the one error line."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from flax_bert import hf
    from flax_bert.data import prepare as prepare_lib
    from flax_bert.data.config import DataOptions

    # An HF model whose vocab is a WordPiece vocab trained on the corpus.
    opts = DataOptions().replace(input=(corpus,), vocab_size=300, max_seq_length=32,
                                          num_workers=1)
    meta = prepare_lib.prepare(opts, str(tmp_path / "prep"), progress=False)
    hf_dir = tmp_path / "hf"
    torch.manual_seed(0)
    size = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=64)
    original = transformers.BertModel(transformers.BertConfig(
        vocab_size=meta["vocab_size"], **size)).eval()
    original.save_pretrained(hf_dir)
    shutil.copyfile(tmp_path / "prep" / "vocab.txt", hf_dir / "vocab.txt")

    workdir = tmp_path / "run"
    with pytest.warns(UserWarning, match="freshly initialised"):  # no MLM/NSP heads in it
        assert hf.main(["import", str(hf_dir), f"--workdir={workdir}"]) == 0
    import train as train_cli
    out = io.StringIO()
    code, stderr = h.cli_here(train_cli, ["train.py", f"--workdir={workdir}",
                                          f"--config.data.input={corpus}", *CONTINUE], out)
    assert code == 0, stderr[-3000:]
    assert "initialising from" in out.getvalue()
    saved = json.load(open(workdir / "config.json"))
    assert {k: saved[k] for k in size} == size and saved["vocab_size"] == meta["vocab_size"]
    out = tmp_path / "exported"
    assert hf.main(["export", f"--workdir={workdir}", str(out)]) == 0
    model, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    before = {f"bert.{k}": v for k, v in original.state_dict().items()}
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > 10  # trained, not just copied
    assert (out / "vocab.txt").read_text() == (hf_dir / "vocab.txt").read_text()

    code, stderr = h.cli_here(train_cli, ["train.py", f"--workdir={workdir}",
                                          f"--config.data.input={corpus}", *CONTINUE,
                                          "--config.model.hidden_size=32"])
    assert code == 2 and stderr.count("\n") == 1, stderr[-2000:]
    assert "config.json has hidden_size=48 but the config asks for 32" in stderr
