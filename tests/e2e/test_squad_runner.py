"""The SQuAD runner end to end on generated v1.1 and v2.0 sets (questions spread over
several doc-stride windows): the eval rows are the official metrics of the written
predictions, and the transformers export gives our start and end logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from configs import squad as squad_config
from flax_bert import hf_names
from flax_bert.tasks.squad import data as squad, task as squad_runner
from flax_bert.trainer import checkpoint
from flax_bert.trainer.run_folder import Paths
from tests import ckpt_helpers as h, downstream_fixtures as dx, finetune_fixtures as fx


@pytest.fixture(scope="module")
def squad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("squad")
    fx.write_pretrained(str(root / "pre"))  # "where", "is" and "." are [UNK]
    dx.write_squad(str(root / "train-v1.json"), 24, seed=1)
    dx.write_squad(str(root / "dev-v1.json"), 10, seed=2)
    dx.write_squad(str(root / "train-v2.json"), 24, seed=3, impossible_every=3)
    dx.write_squad(str(root / "dev-v2.json"), 12, seed=4, impossible_every=3)
    return root


def run_squad(root, workdir: str, train: str, eval_: str, *flags: str) -> tuple[dict, str]:
    config = h.with_flags(squad_config.get_config(), [
        *dx.SQUAD_RUN, f"--config.init.checkpoint={root}/pre", f"--config.data.train={train}",
        f"--config.data.eval={eval_}", *flags])
    return dx.run_here(squad_runner.train_and_evaluate, config, workdir)


def _eval_rows(workdir) -> list[dict]:
    rows = [json.loads(line) for line in open(Paths(workdir).metrics)]
    return [r for r in rows if r["split"] == "eval"]


def test_squad_v1(squad_root, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root, workdir = squad_root, str(tmp_path / "run")
    final, printed = run_squad(root, workdir, f"{root}/train-v1.json", f"{root}/dev-v1.json")
    paths = Paths(workdir)
    assert "24 train questions in" in printed
    assert [r["step"] for r in _eval_rows(workdir)] == [2, 4]
    assert set(final) == {"exact_match", "f1"}
    examples = squad.read_squad(f"{root}/dev-v1.json")
    predictions = json.loads(open(paths.predictions).read())
    assert set(predictions) == {e.id for e in examples}
    for example in examples:  # every answer is a span of its context
        assert predictions[example.id] in example.context
    assert squad.evaluate_v1(examples, predictions) == pytest.approx(final)
    nbest = json.loads(open(paths.nbest_predictions).read())
    assert all(nbest[q][0]["text"] == predictions[q] for q in predictions)  # 20 spans: some

    # The export: transformers' BertForQuestionAnswering gives our start and end logits.
    model = transformers.BertForQuestionAnswering.from_pretrained(
        paths.export, attn_implementation="eager").eval()
    tokenizer = squad.make_tokenizer(paths.vocab, True, 16, 4)
    windows = squad.encode(examples, tokenizer, 4)  # [F, S]
    assert np.bincount(windows["example_index"]).min() >= 2  # several windows a question
    inputs = {k: windows[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        out = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in inputs.items()})
    ours = hf_names.make_model(checkpoint.load_config(workdir), "question_answering").apply(
        {"params": checkpoint.load_params(workdir)}, *inputs.values())
    mask = windows["attention_mask"] == 1
    for theirs, mine in zip((out.start_logits, out.end_logits), ours):
        np.testing.assert_allclose(theirs.numpy()[mask], np.asarray(mine)[mask], atol=1e-5)
    # and so the run's answers.
    again = squad.postprocess(examples, windows, out.start_logits.numpy(),
                              out.end_logits.numpy(), 20, 3)
    assert again.answers == predictions


def test_squad_v2(squad_root, tmp_path):
    root, workdir = squad_root, str(tmp_path / "run")
    final, _ = run_squad(root, workdir, f"{root}/train-v2.json", f"{root}/dev-v2.json",
                         "--config.squad.version_2=True")
    assert set(final) == {"exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact",
                          "NoAns_f1", "best_exact", "best_exact_thresh", "best_f1",
                          "best_f1_thresh"}
    paths = Paths(workdir)
    examples = squad.read_squad(f"{root}/dev-v2.json")
    predictions = json.loads(open(paths.predictions).read())
    null_odds = json.loads(open(paths.null_odds).read())
    expected = squad.evaluate_v2(examples, predictions, null_odds)
    assert {k: v for k, v in expected.items() if not k.endswith("total")} == pytest.approx(final)
    for example in examples:  # an answer is "" exactly when the null score wins
        assert (predictions[example.id] == "") == (null_odds[example.id] > 0.0)
