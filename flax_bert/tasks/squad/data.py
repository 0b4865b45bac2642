"""SQuAD v1.1 / v2.0: read the official JSON, cut (question, context) pairs into doc-stride
windows, turn start/end logits back into answer text, and score as the official scripts do.

Shape legend: F windows (features), S tokens a window (max_seq_length), N examples.

Windows come from the fast tokenizer (HF `tokenizers`, the model's vocab.txt):
`[CLS] question [SEP] context [SEP]`, the question cut to `max_query_length` tokens,
truncation `only_second` to `max_seq_length` with overflowing windows that overlap by
`doc_stride` tokens (the `stride` of transformers' run_qa.py). Each window keeps its
context tokens' character offsets, so an answer is always a slice of the original context.
Labels point at the answer's first and last token, or at [CLS] (index 0) when the answer
is not wholly inside the window or the question has none (v2.0).

Everything here is NumPy and Python; a model (flax_bert.model.BertForQuestionAnswering)
turns the windows into start and end logits [F, S].
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import string
from typing import Any, NamedTuple

import numpy as np
from tokenizers import Tokenizer

from flax_bert.data import vocab as vocab_lib
from flax_bert.errors import UserError

OUTSIDE = -1  # the offset of a token that is not in the context (question, special, pad)
PUNCTUATION = frozenset(string.punctuation)


class Answer(NamedTuple):
    text: str  # as the file gives it (scored against predictions)
    start: int  # character span [start, end) in the context (the labels)
    end: int


@dataclasses.dataclass(frozen=True)
class SquadExample:
    id: str
    question: str
    context: str
    answers: list[Answer]  # [] for an impossible question (v2.0)


# ---- Reading ---------------------------------------------------------------------------------

def read_squad(path: str) -> list[SquadExample]:
    """The questions of a SQuAD-format JSON file, in file order; a malformed question is a
    UserError naming the file and the question id."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; pass a SQuAD v1.1 / v2.0 JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a JSON file ({e}); pass a SQuAD-format file") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise UserError(f"{path}: no 'data' list at the top; pass a SQuAD-format file")
    examples, seen = [], set()
    try:
        for article in dataset["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    example = _example(path, context, qa)
                    if example.id in seen:
                        raise UserError(f"{path}: question id {example.id!r} occurs twice; "
                                        f"give each question its own id")
                    seen.add(example.id)
                    examples.append(example)
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: missing or malformed field {e} in 'data'; use SQuAD's "
                        f"format (data > paragraphs > context, qas)") from None
    if not examples:
        raise UserError(f"{path}: no questions (empty 'data'); pass a SQuAD-format file")
    return examples


def _example(path: str, context: str, qa: dict[str, Any]) -> SquadExample:
    qid, impossible = str(qa["id"]), bool(qa.get("is_impossible", False))
    answers = []
    for answer in qa["answers"]:
        text, start = answer["text"], answer["answer_start"]
        span = _locate(context, text, start)
        if span is None:
            raise UserError(f"{path}: question {qid!r}: answer {text!r} is not at "
                            f"answer_start {start} of its context; fix the answer or its start")
        answers.append(Answer(text, *span))
    if impossible and answers:
        raise UserError(f"{path}: question {qid!r} is_impossible but has answers; empty its "
                        f"'answers' (v2.0 keeps them in 'plausible_answers')")
    if not impossible and not answers:
        raise UserError(f"{path}: question {qid!r} has no answers; add one or set "
                        f"is_impossible (SQuAD v2.0)")
    return SquadExample(qid, qa["question"], context, answers)


def _locate(context: str, text: str, start: int) -> tuple[int, int] | None:
    """The character span of `text` at `start` in context, or None. Runs of whitespace match
    any whitespace (google-research/bert's run_squad.py compares whitespace-split words),
    and the answer's own leading and trailing whitespace is dropped; nothing else differs."""
    words = text.split()
    if not words or not isinstance(start, int) or not 0 <= start <= len(context):
        return None
    match = re.compile(r"\s*" + r"\s+".join(map(re.escape, words))).match(context, start)
    if match is None:
        return None
    return match.end() - len(match.group().lstrip()), match.end()


# ---- Windows ---------------------------------------------------------------------------------

def make_tokenizer(vocab_path: str, lowercase: bool, max_seq_length: int = 384,
                   doc_stride: int = 128) -> Tokenizer:
    """The BERT tokenizer of a vocab.txt that makes `[CLS] q [SEP] c [SEP]` windows of
    max_seq_length tokens (padded), consecutive windows sharing doc_stride context tokens
    (flax_bert.data.vocab.input_tokenizer)."""
    return vocab_lib.input_tokenizer(vocab_path, lowercase, max_seq_length, "only_second",
                                     doc_stride)


def _cut_questions(questions: list[str], tokenizer: Tokenizer, max_query_length: int
                   ) -> list[str]:
    """Each question up to the end of its max_query_length-th token."""
    plain = Tokenizer.from_str(tokenizer.to_str())  # a copy without truncation and padding
    plain.no_truncation()
    plain.no_padding()
    out = []
    for question, tokens in zip(questions, plain.encode_batch(questions, add_special_tokens=False)):
        cut = len(tokens.offsets) > max_query_length
        out.append(question[:tokens.offsets[max_query_length - 1][1]] if cut else question)
    return out


def encode(examples: list[SquadExample], tokenizer: Tokenizer,
           max_query_length: int = 64) -> dict[str, np.ndarray]:
    """All windows of all examples (a tokenizer of `make_tokenizer`): input_ids,
    token_type_ids, attention_mask [F, S]; offsets [F, S, 2] (character span of each context
    token, OUTSIDE elsewhere); example_index [F]; start_positions, end_positions [F] (the
    first answer's tokens, 0 = [CLS] when it is not in the window or there is none)."""
    truncation = tokenizer.truncation
    room = truncation["max_length"] - max_query_length - 3  # context tokens a window can hold
    if truncation["stride"] >= room:
        raise UserError(f"doc_stride {truncation['stride']} must be below max_seq_length - "
                        f"max_query_length - 3 = {room}; lower doc_stride or max_query_length")
    questions = _cut_questions([e.question for e in examples], tokenizer, max_query_length)
    encodings = tokenizer.encode_batch(list(zip(questions, [e.context for e in examples])))
    rows: dict[str, list] = collections.defaultdict(list)
    for index, (example, encoding) in enumerate(zip(examples, encodings)):
        for window in (encoding, *encoding.overflowing):
            in_context = np.array([s == 1 for s in window.sequence_ids])  # [S]
            offsets = np.where(in_context[:, None], np.array(window.offsets), OUTSIDE)  # [S, 2]
            start, end = _positions(offsets, example.answers[0] if example.answers else None)
            rows["input_ids"].append(window.ids)
            rows["token_type_ids"].append(window.type_ids)
            rows["attention_mask"].append(window.attention_mask)
            rows["offsets"].append(offsets)
            rows["example_index"].append(index)
            rows["start_positions"].append(start)
            rows["end_positions"].append(end)
    return {key: np.array(value, np.int32) for key, value in rows.items()}


def _positions(offsets: np.ndarray, answer: Answer | None) -> tuple[int, int]:
    """(first, last) token of the answer in a window of offsets [S, 2]; (0, 0) outside."""
    context = offsets[:, 0] != OUTSIDE  # [S]
    if answer is None or not context.any():
        return 0, 0
    tokens = np.flatnonzero(context)  # [T] positions of context tokens
    starts, ends = offsets[tokens, 0], offsets[tokens, 1]  # [T]
    if starts[0] > answer.start or ends[-1] < answer.end:
        return 0, 0
    first = tokens[np.flatnonzero(starts <= answer.start)[-1]]
    last = tokens[np.flatnonzero(ends >= answer.end)[0]]
    return int(first), int(last)


# ---- Predictions -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Predictions:
    answers: dict[str, str]  # question id -> predicted text ("" = no answer)
    nbest: dict[str, list[dict[str, Any]]]  # id -> best spans: text, score, probability
    null_score_diff: dict[str, float]  # v2.0: id -> null score - best span score


def postprocess(examples: list[SquadExample], features: dict[str, np.ndarray],
                start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int = 20,
                max_answer_length: int = 30, version_2: bool = False,
                null_score_diff_threshold: float = 0.0) -> Predictions:
    """Answers from start/end logits [F, S] of `encode`'s windows. Per example, over all its
    windows: the n_best_size best spans (start <= end, both in the window's context, at most
    max_answer_length tokens; n_best_size top starts x top ends a window; a span found in
    two windows counts once, at its best score), text cut from the context by character
    offsets. v2.0: the null score is [CLS]'s start + end logit, the minimum over windows;
    the answer is "" when null - best span > null_score_diff_threshold."""
    windows: dict[int, list[int]] = collections.defaultdict(list)
    for f, index in enumerate(features["example_index"]):
        windows[int(index)].append(f)
    answers, nbest, diffs = {}, {}, {}
    for index, example in enumerate(examples):
        spans: dict[tuple[int, int], float] = {}  # (start char, end char) -> best score
        null_score = np.inf
        for f in windows[index]:
            s, e = start_logits[f], end_logits[f]  # [S], [S]
            offsets = features["offsets"][f]  # [S, 2]
            null_score = min(null_score, float(s[0] + e[0]))
            top_s = np.argsort(s)[::-1][:n_best_size]  # [K]
            top_e = np.argsort(e)[::-1][:n_best_size]  # [K]
            length = top_e[None, :] - top_s[:, None] + 1  # [K, K]
            ok = ((offsets[top_s, 0] != OUTSIDE)[:, None] & (offsets[top_e, 0] != OUTSIDE)[None]
                  & (length >= 1) & (length <= max_answer_length))  # [K, K]
            for i, j in zip(*np.nonzero(ok)):
                span = (int(offsets[top_s[i], 0]), int(offsets[top_e[j], 1]))
                spans[span] = max(spans.get(span, -np.inf), float(s[top_s[i]] + e[top_e[j]]))
        best = sorted(spans.items(), key=lambda kv: -kv[1])[:n_best_size]
        scores = np.array([score for _, score in best])  # [n]
        probs = np.exp(scores - scores.max(initial=-np.inf))  # [n]
        nbest[example.id] = [{"text": example.context[a:b], "score": score,
                              "probability": float(p / probs.sum())}
                             for ((a, b), score), p in zip(best, probs)]
        answers[example.id] = best_text = nbest[example.id][0]["text"] if best else ""
        if version_2:
            diffs[example.id] = null_score - (best[0][1] if best else -np.inf)
            answers[example.id] = "" if diffs[example.id] > null_score_diff_threshold else best_text
    return Predictions(answers, nbest, diffs)


# ---- The official evaluation -----------------------------------------------------------------

def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (the
    official v1.1 and v2.0 scripts' rule, in their order)."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 of the normalized answers (v1.1's rule: 0 when nothing is shared)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _f1_v2(prediction: str, gold: str) -> float:
    """v2.0's rule: as v1.1, but 1 when both are empty after normalizing (no answer)."""
    if not normalize_answer(prediction) or not normalize_answer(gold):
        return float(normalize_answer(prediction) == normalize_answer(gold))
    return f1_score(prediction, gold)


def evaluate_v1(examples: list[SquadExample], predictions: dict[str, str]) -> dict[str, float]:
    """The official v1.1 script: exact_match and f1 in percent, each the max over the gold
    answers; a question without a prediction scores 0."""
    em = f1 = 0.0
    for example in examples:
        if example.id in predictions:
            golds, pred = [a.text for a in example.answers], predictions[example.id]
            em += max(exact_match(pred, g) for g in golds)
            f1 += max(f1_score(pred, g) for g in golds)
    return {"exact_match": 100.0 * em / len(examples), "f1": 100.0 * f1 / len(examples)}


def evaluate_v2(examples: list[SquadExample], predictions: dict[str, str],
                na_probs: dict[str, float] | None = None) -> dict[str, float]:
    """The official v2.0 script: exact, f1, total and their HasAns_ / NoAns_ splits (in
    percent; an impossible question's only gold answer is ""; questions without a
    prediction are left out), scored on the answers as predicted: "" is "no answer"
    (postprocess has already applied its null_score_diff_threshold). With na_probs (e.g.
    Predictions.null_score_diff, a logit gap, not a probability), also best_exact /
    best_f1 and the thresholds that give them (the script's sweep); na_probs never change
    exact / f1 (the script's na_prob_thresh, 1.0, would turn every question whose gap is
    above 1 into "no answer")."""
    exact, f1, has_answer = {}, {}, {}
    for example in examples:
        golds = [a.text for a in example.answers if normalize_answer(a.text)] or [""]
        has_answer[example.id] = bool(example.answers)
        if example.id in predictions:
            pred = predictions[example.id]
            exact[example.id] = max(exact_match(pred, g) for g in golds)
            f1[example.id] = max(_f1_v2(pred, g) for g in golds)
    out: dict[str, float] = {}
    for prefix, ids in (("", list(exact)),
                        ("HasAns_", [q for q in exact if has_answer[q]]),
                        ("NoAns_", [q for q in exact if not has_answer[q]])):
        if ids or not prefix:
            for name, raw in (("exact", exact), ("f1", f1)):
                out[prefix + name] = 100.0 * sum(raw[q] for q in ids) / len(ids)
            out[prefix + "total"] = len(ids)
    if na_probs is not None:
        for name, raw in (("exact", exact), ("f1", f1)):
            out[f"best_{name}"], out[f"best_{name}_thresh"] = _best_threshold(
                predictions, raw, na_probs, has_answer)
    return out


def _best_threshold(predictions: dict[str, str], scores: dict[str, float],
                    na_probs: dict[str, float], has_answer: dict[str, bool]) -> tuple[float, float]:
    """The official script's sweep: questions by rising na_prob, each threshold answering
    those at or below it; the best total score (percent) and its threshold."""
    score = best = sum(1 for q in has_answer if not has_answer[q])
    threshold = 0.0
    for q in sorted(na_probs, key=lambda k: na_probs[k]):
        if q not in scores:
            continue
        score += scores[q] if has_answer[q] else (-1 if predictions[q] else 0)
        if score > best:
            best, threshold = score, na_probs[q]
    return 100.0 * best / len(scores), float(threshold)
