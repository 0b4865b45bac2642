"""SQuAD: reading the official JSON, doc-stride windows and their labels, post-processing
of logits across windows (v1.1 and v2.0's null answer), and the official metrics on cases
checked by hand."""

import collections
import json
import re
import string

import numpy as np
import pytest

from flax_bert.errors import UserError
from flax_bert.tasks.squad import data as squad
from tests.finetune_fixtures import write_vocab

WORDS = [f"w{i}" for i in range(40)]
CONTEXT = " ".join(WORDS) + "."  # 41 tokens, one a word, then "."
# 3 question tokens + [CLS] [SEP] [SEP] leave 14 context tokens a window; windows share 4,
# so they start at context tokens 0, 10, 20, 30.
SEQ, STRIDE, QUERY = 20, 4, 6


def _span(text: str) -> int:
    return CONTEXT.index(text)


def write_squad(path, qas, context=CONTEXT):
    data = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return str(path)


def qa(qid, text=None, start=None, impossible=False, question="where is it"):
    answers = [] if text is None else [{"text": text, "answer_start": start}]
    return {"id": qid, "question": question, "answers": answers, "is_impossible": impossible}


@pytest.fixture
def tokenizer(tmp_path):
    vocab = write_vocab(str(tmp_path / "vocab.txt"), (*WORDS, "where", "is", "it", "."))
    return squad.make_tokenizer(vocab, True, max_seq_length=SEQ, doc_stride=STRIDE)


def test_read_squad(tmp_path):
    path = write_squad(tmp_path / "d.json", [
        qa("a", "w11 w12", _span("w11 w12")),
        qa("b", " w3  w4 ", _span("w3 w4") - 1),  # whitespace differs: allowed, as the reference
        qa("c", impossible=True)])
    a, b, c = squad.read_squad(path)
    assert a.answers == [squad.Answer("w11 w12", _span("w11"), _span("w12") + 3)]
    assert CONTEXT[b.answers[0].start:b.answers[0].end] == "w3 w4"
    assert c.answers == [] and c.context == CONTEXT

    def error(qas, match):
        with pytest.raises(UserError, match=match) as e:
            squad.read_squad(write_squad(tmp_path / "bad.json", qas))
        assert "\n" not in str(e.value) and "bad.json" in str(e.value)

    error([qa("x", "w11", _span("w11") + 1)], "question 'x': answer 'w11' is not at answer_start")
    error([qa("x", "w12", _span("w11"))], "question 'x': answer 'w12' is not at")
    error([qa("y", "w2", _span("w2")), qa("y", "w3", _span("w3"))], "'y' occurs twice")
    error([qa("z")], "question 'z' has no answers")
    error([qa("z", "w2", _span("w2"), impossible=True)], "'z' is_impossible but has answers")
    (tmp_path / "bad.json").write_text('{"data": [{"title": "t"}]}')
    with pytest.raises(UserError, match="missing or malformed field 'paragraphs'"):
        squad.read_squad(str(tmp_path / "bad.json"))


def _examples(tmp_path, *qas):
    return squad.read_squad(write_squad(tmp_path / "d.json", list(qas)))


def test_windows_and_labels(tmp_path, tokenizer):
    examples = _examples(tmp_path, qa("both", "w11 w12", _span("w11 w12")),
                         qa("crosses", "w12 w13 w14", _span("w12 w13 w14")),
                         qa("none", impossible=True))
    f = squad.encode(examples, tokenizer, max_query_length=QUERY)
    assert f["input_ids"].shape == f["attention_mask"].shape == (12, SEQ)
    assert f["offsets"].shape == (12, SEQ, 2)
    assert f["example_index"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    windows = f["offsets"][:4]  # [4, S, 2]
    first = [CONTEXT[w[w[:, 0] >= 0][0, 0]:].split()[0] for w in windows]
    assert first == ["w0", "w10", "w20", "w30"]  # consecutive windows share STRIDE tokens
    assert (f["token_type_ids"][f["offsets"][..., 0] >= 0] == 1).all()  # context: type 1
    for k in range(12):
        s, e = f["start_positions"][k], f["end_positions"][k]
        text = examples[f["example_index"][k]].answers
        if s:
            assert CONTEXT[f["offsets"][k, s, 0]:f["offsets"][k, e, 1]] == text[0].text
    # "w11 w12" is in windows 0 and 1; "w12 w13 w14" only wholly in window 1; no answer: [CLS]
    assert (f["start_positions"] > 0).tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert f["end_positions"][f["start_positions"] == 0].tolist() == [0] * 9


def test_long_question_is_cut(tmp_path, tokenizer):
    long = " ".join(["where"] * 10)
    f = squad.encode(_examples(tmp_path, qa("q", "w1", _span("w1"), question=long)), tokenizer,
                     max_query_length=QUERY)
    assert ((f["token_type_ids"][0] == 0) & (f["attention_mask"][0] == 1)).sum() == QUERY + 2
    with pytest.raises(UserError, match="doc_stride 4 must be below"):
        squad.encode(_examples(tmp_path, qa("q", "w1", _span("w1"))), tokenizer, 13)


def _logits(f, points):
    """Start/end logits [F, S]: low everywhere, `points` (window, position, value) high."""
    start = np.full(f["input_ids"].shape, -5.0)
    end = np.full(f["input_ids"].shape, -5.0)
    for logits, (window, position, value) in points:
        (start if logits == "s" else end)[window, position] = value
    return start, end


def _position(f, window, word):
    """The token position of `word` in a window."""
    return int(np.flatnonzero(f["offsets"][window, :, 0] == CONTEXT.index(word + " "))[0])


def test_postprocess_across_windows(tmp_path, tokenizer):
    examples = _examples(tmp_path, qa("q", "w12 w13 w14", _span("w12 w13 w14")))
    f = squad.encode(examples, tokenizer, max_query_length=QUERY)
    # Window 0 cannot hold the answer (w14 is past its end); window 1 can, window 2 cannot.
    # The highest logits sit on question tokens and on a reversed span: both are skipped.
    start, end = _logits(f, [("s", (1, _position(f, 1, "w12"), 4.0)),
                             ("e", (1, _position(f, 1, "w14"), 3.0)),
                             ("s", (0, 2, 9.0)), ("e", (0, 3, 9.0)),
                             ("s", (2, _position(f, 2, "w25"), 8.0)),
                             ("e", (2, _position(f, 2, "w22"), 8.0))])
    out = squad.postprocess(examples, f, start, end, n_best_size=3)
    assert out.answers == {"q": "w12 w13 w14"}
    assert out.nbest["q"][0]["score"] == pytest.approx(7.0)
    assert sum(p["probability"] for p in out.nbest["q"]) == pytest.approx(1.0)
    # A span found in two windows (w11 w12 is in windows 0 and 1) counts once, at its best.
    start, end = _logits(f, [("s", (0, _position(f, 0, "w11"), 2.0)),
                             ("e", (0, _position(f, 0, "w12"), 2.0)),
                             ("s", (1, _position(f, 1, "w11"), 3.0)),
                             ("e", (1, _position(f, 1, "w12"), 3.0))])
    out = squad.postprocess(examples, f, start, end)
    texts = [p["text"] for p in out.nbest["q"]]
    assert texts[0] == "w11 w12" and texts.count("w11 w12") == 1
    assert out.nbest["q"][0]["score"] == pytest.approx(6.0) and len(texts) == len(set(texts))
    # max_answer_length (in tokens) bounds a span.
    start, end = _logits(f, [("s", (1, _position(f, 1, "w10"), 5.0)),
                             ("e", (1, _position(f, 1, "w14"), 5.0))])
    assert squad.postprocess(examples, f, start, end, max_answer_length=4).answers["q"] != \
        "w10 w11 w12 w13 w14"
    assert squad.postprocess(examples, f, start, end, max_answer_length=5).answers["q"] == \
        "w10 w11 w12 w13 w14"


def test_postprocess_null_answer(tmp_path, tokenizer):
    examples = _examples(tmp_path, qa("q", "w11", _span("w11")))
    f = squad.encode(examples, tokenizer, max_query_length=QUERY)
    span = [("s", (1, _position(f, 1, "w11"), 4.0)), ("e", (1, _position(f, 1, "w11"), 4.0))]
    # Null score: [CLS] start + end, the minimum over the 4 windows: 1 + 2 = 3 (window 3).
    nulls = [p for w, v in enumerate((6.0, 6.0, 6.0, 1.0))
             for p in (("s", (w, 0, v)), ("e", (w, 0, v if w < 3 else 2.0)))]
    start, end = _logits(f, span + nulls)
    for threshold, answer in ((-6.0, ""), (-5.0, "w11"), (0.0, "w11")):
        out = squad.postprocess(examples, f, start, end, version_2=True,
                                null_score_diff_threshold=threshold)
        assert out.null_score_diff["q"] == pytest.approx(3.0 - 8.0)
        assert out.answers["q"] == answer
    start, end = _logits(f, span + [("s", (w, 0, 6.0)) for w in range(4)]
                         + [("e", (w, 0, 6.0)) for w in range(4)])
    out = squad.postprocess(examples, f, start, end, version_2=True)
    assert out.null_score_diff["q"] == pytest.approx(4.0) and out.answers["q"] == ""
    assert squad.postprocess(examples, f, start, end).answers["q"] == "w11"  # v1.1: no null


def test_normalization_and_scores():
    assert squad.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert squad.normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert squad.normalize_answer("another theme") == "another theme"  # articles are words
    assert squad.exact_match("the Eiffel Tower.", "Eiffel tower") == 1
    assert squad.f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert squad.f1_score("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert squad.f1_score("", "cat") == 0.0 and squad.f1_score("the", "a") == 0.0  # v1.1


def _ex(qid, *golds):
    return squad.SquadExample(qid, "?", "", [squad.Answer(g, 0, len(g)) for g in golds])


def test_evaluate_v1_max_over_golds():
    examples = [_ex("a", "Denver Broncos", "The Denver Broncos"), _ex("b", "1990s", "the 1990s")]
    out = squad.evaluate_v1(examples, {"a": "denver broncos", "b": "1990s decade"})
    assert out["exact_match"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (1 + 2 * 0.5 / 1.5) / 2)
    assert squad.evaluate_v1(examples, {"a": "Broncos"})["f1"] == pytest.approx(
        100 * (2 * 0.5 / 1.5) / 2)  # no prediction for "b": 0


def test_evaluate_v2_splits_and_thresholds():
    examples = [_ex("a", "Denver Broncos", "the Denver Broncos"), _ex("b"), _ex("c", "Santa Clara")]
    preds = {"a": "Broncos", "b": "", "c": "Levi's Stadium"}
    out = squad.evaluate_v2(examples, preds)
    f1_a = 2 * 0.5 / 1.5
    assert out["exact"] == pytest.approx(100 / 3) and out["total"] == 3
    assert out["f1"] == pytest.approx(100 * (f1_a + 1) / 3)
    assert out["HasAns_exact"] == 0.0 and out["HasAns_total"] == 2
    assert out["HasAns_f1"] == pytest.approx(100 * f1_a / 2)
    assert out["NoAns_exact"] == out["NoAns_f1"] == 100.0 and out["NoAns_total"] == 1
    assert "best_exact" not in out
    # With no-answer probabilities: a question above na_prob_thresh counts as "no answer";
    # best_*: the official sweep (hand-computed: answering only "a" scores 2 of 3).
    preds = {"a": "the Denver Broncos", "b": "x", "c": "Levi's"}
    na = {"a": 0.1, "b": 0.8, "c": 0.4}
    out = squad.evaluate_v2(examples, preds, na)
    assert out["exact"] == pytest.approx(100 / 3)
    assert out["best_exact"] == pytest.approx(200 / 3) and out["best_exact_thresh"] == 0.1
    assert out["best_f1"] == pytest.approx(200 / 3) and out["best_f1_thresh"] == 0.1
    # The null odds are logit gaps: above 1 they change nothing but best_* (the answers as
    # predicted are scored; "" is "no answer").
    far = {q: 1.0 + 10 * p for q, p in na.items()}
    out_far = squad.evaluate_v2(examples, preds, far)
    assert {k: out_far[k] for k in out if not k.endswith("_thresh")} == pytest.approx(
        {k: v for k, v in out.items() if not k.endswith("_thresh")})
    assert out_far["best_exact_thresh"] == pytest.approx(2.0)


# ---- The official SQuAD v2.0 script (evaluate-v2.0.py), as a reference ------------------------

def _official_normalize(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", s).split())


def _official_f1(gold, pred):
    gold_toks = _official_normalize(gold).split() if gold else []
    pred_toks = _official_normalize(pred).split() if pred else []
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if not gold_toks or not pred_toks:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision, recall = num_same / len(pred_toks), num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _official_best(preds, scores, na_probs, has_ans):
    cur = best = sum(1 for k in has_ans if not has_ans[k])
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        cur += scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0)
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def official_v2(dataset, preds, na_probs, na_prob_thresh):
    """evaluate-v2.0.py's main on a dataset dict, predictions and na_probs."""
    has_ans, exact_raw, f1_raw = {}, {}, {}
    for article in dataset["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                qid = qa["id"]
                has_ans[qid] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"]
                         if _official_normalize(a["text"])] or [""]
                if qid in preds:
                    exact_raw[qid] = max(int(_official_normalize(a) == _official_normalize(
                        preds[qid])) for a in golds)
                    f1_raw[qid] = max(_official_f1(a, preds[qid]) for a in golds)

    def thresh(scores):
        return {q: float(not has_ans[q]) if na_probs[q] > na_prob_thresh else s
                for q, s in scores.items()}

    exact, f1 = thresh(exact_raw), thresh(f1_raw)
    out = {}
    for prefix, ids in (("", list(exact)), ("HasAns_", [k for k in has_ans if has_ans[k]]),
                        ("NoAns_", [k for k in has_ans if not has_ans[k]])):
        if ids:
            out[prefix + "exact"] = 100.0 * sum(exact[k] for k in ids) / len(ids)
            out[prefix + "f1"] = 100.0 * sum(f1[k] for k in ids) / len(ids)
            out[prefix + "total"] = len(ids)
    for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
        out[f"best_{name}"], out[f"best_{name}_thresh"] = _official_best(
            preds, raw, na_probs, has_ans)
    return out


def test_evaluate_v2_threshold_above_one(tmp_path, tokenizer):
    """At null_score_diff_threshold 1.5, questions whose null - best span gap lies in
    (1, 1.5] keep their span: the metrics are the official script's on predictions.json
    (na_prob_thresh above every gap: nothing overridden), best_* its sweep over the gaps."""
    # id -> (gold answer or None, predicted span's first and last word, null - span score)
    cases = {"kept_right": ("w11", ("w11", "w11"), 1.2),
             "kept_wrong": (None, ("w20", "w20"), 1.4),
             "null_right": (None, ("w25", "w25"), 2.0),
             "null_wrong": ("w5", ("w5", "w5"), 3.0),
             "span": ("w30 w31", ("w30", "w31"), -3.0),
             "partial": ("w12 w13", ("w12", "w12"), 0.5)}
    qas = [qa(q, gold, None if gold is None else _span(gold), impossible=gold is None)
           for q, (gold, _, _) in cases.items()]
    path = write_squad(tmp_path / "d.json", qas)
    examples = squad.read_squad(path)
    f = squad.encode(examples, tokenizer, max_query_length=QUERY)
    points = []
    for k, (_, (first, last), gap) in enumerate(cases.values()):
        windows = np.flatnonzero(f["example_index"] == k)
        w = next(w for w in windows if all(
            (f["offsets"][w, :, 0] == CONTEXT.index(word + " ")).any() for word in (first, last)))
        points += [("s", (w, _position(f, w, first), 4.0)), ("e", (w, _position(f, w, last), 4.0))]
        points += [(which, (v, 0, (8.0 + gap) / 2)) for v in windows for which in "se"]
    start, end = _logits(f, points)
    out = squad.postprocess(examples, f, start, end, version_2=True,
                            null_score_diff_threshold=1.5)
    assert out.null_score_diff == pytest.approx({q: gap for q, (_, _, gap) in cases.items()})
    assert out.answers == {"kept_right": "w11", "kept_wrong": "w20", "null_right": "",
                           "null_wrong": "", "span": "w30 w31", "partial": "w12"}
    ours = squad.evaluate_v2(examples, out.answers, out.null_score_diff)
    dataset = json.loads(open(path).read())
    reference = official_v2(dataset, out.answers, out.null_score_diff, float("inf"))
    assert set(ours) == set(reference)
    assert ours == pytest.approx(reference)
    # By hand: exact 3 of 6 (kept_right, null_right, span); partial's f1 2/3.
    assert ours["exact"] == pytest.approx(50.0)
    assert ours["f1"] == pytest.approx(100 * (3 + 2 / 3) / 6)
    assert ours["HasAns_exact"] == pytest.approx(50.0) and ours["NoAns_exact"] == 50.0
    # The script's default na_prob_thresh (1.0) would score kept_right and kept_wrong as
    # "no answer", which predictions.json does not say.
    overridden = official_v2(dataset, out.answers, out.null_score_diff, 1.0)
    assert overridden["HasAns_exact"] == pytest.approx(ours["HasAns_exact"] - 100 / 4)
    assert overridden["NoAns_exact"] == pytest.approx(ours["NoAns_exact"] + 100 / 2)
