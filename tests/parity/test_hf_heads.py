"""The task heads against transformers: import, export, logits <= 1e-5, no missing or
unexpected keys."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax_bert import hf, hf_names  # noqa: E402
from flax_bert.config import BertConfig  # noqa: E402
from tests.parity.test_hf import SMALL, TOL, _batch, _maxdiff, _our_params, _torch_run  # noqa: E402

LABELS = ["austen", "melville", "other"]
# head -> (transformers class, num_labels, output names)
CASES = {
    "sequence_classification": (transformers.BertForSequenceClassification, 3, ("logits",)),
    "token_classification": (transformers.BertForTokenClassification, 3, ("logits",)),
    "question_answering": (transformers.BertForQuestionAnswering, 2,
                           ("start_logits", "end_logits")),
}


def _torch_head(cls: type, num_labels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(**SMALL, num_labels=num_labels, attn_implementation="eager")
    model = cls(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def _ours(head: str, config: BertConfig, params: dict, batch) -> tuple:
    out = hf_names.make_model(config, head, hf.num_labels_of(params, head)).apply(
        {"params": params}, *batch)
    return out if isinstance(out, tuple) else (out,)


def _compare(head: str, ours: tuple, ref, batch) -> float:
    mask = batch[2] if head != "sequence_classification" else None
    names = CASES[head][2]
    return max(_maxdiff(o, getattr(ref, n), mask) for o, n in zip(ours, names))


@pytest.mark.parametrize("head", list(CASES))
def test_import_parity(tmp_path, head):
    cls, num_labels, _ = CASES[head]
    model = _torch_head(cls, num_labels, seed=10)
    model.save_pretrained(tmp_path)
    config, params = hf.load_pretrained(str(tmp_path), head=head)
    assert ("pooler" in params["bert"]) == (head == "sequence_classification")
    batch = _batch()
    d = _compare(head, _ours(head, config, params, batch), _torch_run(model, batch), batch)
    print(f"max |delta| {head} import:", d)
    assert d <= TOL


@pytest.mark.parametrize("head", list(CASES))
def test_export_loads_in_transformers(tmp_path, head):
    cls, num_labels, _ = CASES[head]
    config = BertConfig(**SMALL)
    params = _our_params(config)  # a pretraining tree: take its encoder, add a task layer
    init = hf_names.init_params(config, 3, head, num_labels)
    head_params = dict(init, bert={k: v for k, v in params["bert"].items()
                                   if k in init["bert"]})
    labels = LABELS if num_labels == 3 and head == "sequence_classification" else None
    hf.save_pretrained(config, head_params, str(tmp_path), head=head, labels=labels)
    model, info = cls.from_pretrained(tmp_path, output_loading_info=True,
                                      attn_implementation="eager")
    model.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    if labels:
        assert model.config.id2label == dict(enumerate(LABELS))
        assert model.config.label2id == {n: i for i, n in enumerate(LABELS)}
    assert model.config.num_labels == num_labels
    batch = _batch()
    d = _compare(head, _ours(head, config, head_params, batch), _torch_run(model, batch), batch)
    print(f"max |delta| {head} export:", d)
    assert d <= TOL
    _, back = hf.load_pretrained(str(tmp_path), head=head)  # and back, bit for bit
    layer = hf_names.HEADS[head].groups[0]
    np.testing.assert_array_equal(back[layer]["kernel"], head_params[layer]["kernel"])
    np.testing.assert_array_equal(back["bert"]["encoder"]["layers"]["output"]["dense"]["kernel"],
                                  head_params["bert"]["encoder"]["layers"]["output"]["dense"]["kernel"])


def test_pretraining_checkpoint_into_classifier(tmp_path):
    """A BertForPreTraining directory fine-tunes: encoder and pooler kept, the MLM/NSP heads
    dropped and the classifier freshly initialised, each with a warning."""
    torch.manual_seed(11)
    source = transformers.BertForPreTraining(
        transformers.BertConfig(**SMALL, attn_implementation="eager")).eval()
    source.save_pretrained(tmp_path)
    with pytest.warns(UserWarning) as record:
        _, params = hf.load_pretrained(str(tmp_path), head="sequence_classification",
                                       num_labels=5)
    messages = " ".join(str(w.message) for w in record)
    assert "not used by BertForSequenceClassification: cls.predictions, cls.seq_relationship" \
        in messages
    assert "freshly initialised: classifier.weight, classifier.bias" in messages
    assert params["classifier"]["kernel"].shape == (SMALL["hidden_size"], 5)
    np.testing.assert_array_equal(params["bert"]["pooler"]["dense"]["bias"],
                                  source.state_dict()["bert.pooler.dense.bias"].numpy())
