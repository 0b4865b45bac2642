"""SQuAD as a task of the trainer: SQuAD-format questions -> doc-stride windows
(flax_bert.tasks.squad.data) -> BertForQuestionAnswering -> n-best answers and the official
EM / F1 as the eval rows -> a transformers BertForQuestionAnswering folder.

    python finetune.py --config configs/squad.py --workdir DIR \
        [--config.data.train=train-v1.1.json --config.data.eval=dev-v1.1.json]

With no data, the cloze task (flax_bert.tasks.squad.cloze) is built into WORKDIR/cloze. The
final eval's answers go to predictions.json, nbest_predictions.json and (v2.0)
null_odds.json, as the reference scripts write them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import ml_collections

from flax_bert import distributed, files, hf
from flax_bert.compute import Compute
from flax_bert.console import say
from flax_bert.errors import UserError
from flax_bert.heads import BertForQuestionAnswering
from flax_bert.tasks import bundled_data, example_batches, finetuning, model_start
from flax_bert.tasks.squad import cloze, data as squad
from flax_bert.trainer import loop
from flax_bert.trainer.run_folder import Paths

HEAD = "question_answering"
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
LABELS = ("start_positions", "end_positions")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) SQuAD fine-tuning in `workdir`; returns the final EM / F1."""
    with loop.run_folder(config, workdir) as workdir:
        task = Squad.for_run(config, workdir)
        return loop.train_and_evaluate(task, task.config, workdir)


def read_examples(path: str, version_2: bool) -> list[squad.SquadExample]:
    """A SQuAD file's questions; an unanswerable one is a UserError unless version_2."""
    examples = squad.read_squad(path)
    impossible = next((e for e in examples if not e.answers), None)
    if impossible is not None and not version_2:
        raise UserError(f"{path}: question {impossible.id!r} has no answer (SQuAD v2.0); set "
                        f"config.squad.version_2=True")
    return examples


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Squad(finetuning.FineTuning):
    """Extractive question answering over doc-stride windows of the questions' contexts."""

    eval_examples: list[squad.SquadExample]
    eval_features: dict[str, Any]
    export_dir: str
    plots = (("loss", ("loss",)), ("f1", ("exact_match", "exact", "f1")))

    @classmethod
    def for_run(cls, config: ml_collections.ConfigDict, workdir: str) -> Squad:
        """config.data's SQuAD files (or the cloze task, built into the run folder) in
        windows of the start's vocab; config.train.steps from the data (for_data)."""
        s, paths = config.squad, Paths(workdir)
        export_dir = model_start.export_dir(config, paths)
        train_path, eval_path = bundled_data.data_paths(
            config.data, "the cloze task", lambda out: cloze.build(config.cloze, out),
            paths.cloze, (cloze.TRAIN_FILE, cloze.DEV_FILE))
        train_examples = read_examples(train_path, s.version_2)
        eval_examples = read_examples(eval_path, s.version_2)

        start = model_start.resolve_start(config, HEAD)
        model_config = model_start.fine_tuned_config(start, config)
        model_start.check_run_folder(workdir, start, [])
        tokenizer = squad.make_tokenizer(start.vocab, config.data.lowercase,
                                         config.data.max_seq_length, s.doc_stride)
        train_features = squad.encode(train_examples, tokenizer, s.max_query_length)
        eval_features = squad.encode(eval_examples, tokenizer, s.max_query_length)
        config = finetuning.for_data(config, len(train_features["input_ids"]))
        say(f"{len(train_examples)} train questions in {len(train_features['input_ids'])} "
            f"windows, {len(eval_examples)} eval questions in "
            f"{len(eval_features['input_ids'])}; {config.train.steps} steps; starting from "
            f"{start.description}")
        model = BertForQuestionAnswering(model_config, Compute.from_config(config.train))
        return cls(config, paths, start, model_config, [], model,
                   {k: train_features[k] for k in (*MODEL_INPUTS, *LABELS)},
                   {k: eval_features[k] for k in MODEL_INPUTS},
                   eval_examples=eval_examples, eval_features=eval_features,
                   export_dir=export_dir)

    def head_loss(self, logits: Any, batch: dict, total: int) -> tuple[Any, dict]:
        return finetuning.span_loss(logits, batch, total)

    def eval_step(self, params: Any, batch: dict) -> dict:
        """Per window: start_logits and end_logits [B, S] (answers are found on the host)."""
        start_logits, end_logits = self.outputs(params, batch, None)
        return {"start_logits": start_logits, "end_logits": end_logits}

    def evaluate(self, eval_on: Callable[[dict], Any], batches: Iterable[dict],
                 final: bool) -> dict[str, float]:
        """The official metrics of the n-best answers over all of a question's windows."""
        s = self.config.squad
        out = example_batches.gather(eval_on, batches, len(self.eval_features["input_ids"]))
        predictions = squad.postprocess(
            self.eval_examples, self.eval_features, out["start_logits"], out["end_logits"],
            s.n_best_size, s.max_answer_length, s.version_2, s.null_score_diff_threshold)
        if final and distributed.is_writer():
            write_predictions(self.paths, predictions, s.version_2)
        if not s.version_2:
            return squad.evaluate_v1(self.eval_examples, predictions.answers)
        metrics = squad.evaluate_v2(self.eval_examples, predictions.answers,
                                    predictions.null_score_diff)
        return {k: v for k, v in metrics.items() if not k.endswith("total")}

    def export(self, params: Any) -> None:
        hf.save_pretrained(self.model_config, params, self.export_dir, vocab=self.paths.vocab,
                           head=HEAD)
        say(f"exported transformers BertForQuestionAnswering to {self.export_dir}")


def write_predictions(paths: Paths, predictions: squad.Predictions, version_2: bool) -> None:
    """predictions.json, nbest_predictions.json and (v2.0) null_odds.json."""
    outputs = [(paths.predictions, predictions.answers),
               (paths.nbest_predictions, predictions.nbest)]
    if version_2:
        outputs.append((paths.null_odds, predictions.null_score_diff))
    for path, content in outputs:
        files.write_json(path, content, indent=1, ensure_ascii=False)
