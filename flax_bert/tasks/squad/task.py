"""The SQuAD job: SQuAD-format questions -> doc-stride windows (flax_bert.tasks.squad.data)
-> BertForQuestionAnswering on the engine -> n-best answers and the official EM / F1 as
the eval rows -> a transformers BertForQuestionAnswering folder.

    python finetune.py --config configs/squad.py --workdir DIR \
        [--config.data.train=train-v1.1.json --config.data.eval=dev-v1.1.json]

With no data, the cloze task (flax_bert.tasks.squad.cloze) is built into WORKDIR/cloze. The
final eval's answers go to predictions.json, nbest_predictions.json and (v2.0)
null_odds.json, as the reference scripts write them.
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections

from flax_bert import distributed, hf, hf_names as hf_layout
from flax_bert.trainer import run_folder as workdir_lib
from flax_bert.compute import Compute
from flax_bert.errors import UserError
from flax_bert.files import write_json
from flax_bert.tasks import (example_batches as batches, bundled_data as bundled, recipe, model_start as start_lib)
from flax_bert.tasks.squad import cloze, data as squad
from flax_bert.tasks import finetune_job as ft_job, finetune_steps as ft_steps
from flax_bert.trainer import loop as engine
from flax_bert.trainer.monitor import say

HEAD = "question_answering"
PLOTS = (("loss", ("loss",)), ("f1", ("exact_match", "exact", "f1")))
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
LABELS = ("start_positions", "end_positions")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) SQuAD fine-tuning in `workdir`; returns the final EM / F1."""
    return engine.run_locked(_squad, config, workdir)


def read_examples(path: str, version_2: bool) -> list[squad.SquadExample]:
    """A SQuAD file's questions; an unanswerable one is a UserError unless version_2."""
    examples = squad.read_squad(path)
    impossible = next((e for e in examples if not e.answers), None)
    if impossible is not None and not version_2:
        raise UserError(f"{path}: question {impossible.id!r} has no answer (SQuAD v2.0); set "
                        f"config.squad.version_2=True")
    return examples


def _squad(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    s, paths = config.squad, workdir_lib.Paths(workdir)
    export_dir = start_lib.export_dir(config, paths)
    train_path, eval_path = bundled.data_paths(
        config.data, "the cloze task", lambda out: cloze.build(config.cloze, out), paths.cloze,
        (cloze.TRAIN_FILE, cloze.DEV_FILE))
    train_examples = read_examples(train_path, s.version_2)
    eval_examples = read_examples(eval_path, s.version_2)

    start = start_lib.resolve_start(config, HEAD)
    model_config = start_lib.fine_tuned_config(start, config)
    start_lib.check_run_folder(workdir, start, [])
    tokenizer = squad.make_tokenizer(start.vocab, config.data.lowercase,
                                     config.data.max_seq_length, s.doc_stride)
    train_features = squad.encode(train_examples, tokenizer, s.max_query_length)
    eval_features = squad.encode(eval_examples, tokenizer, s.max_query_length)
    num_windows = len(eval_features["input_ids"])
    config = recipe.for_data(config, len(train_features["input_ids"]))
    t = config.train
    say(f"{len(train_examples)} train questions in {len(train_features['input_ids'])} "
        f"windows, {len(eval_examples)} eval questions in {num_windows}; {t.steps} steps; "
        f"starting from {start.description}")

    model = hf_layout.make_model(model_config, HEAD, compute=Compute.from_config(t))
    train_arrays = {k: train_features[k] for k in (*MODEL_INPUTS, *LABELS)}
    eval_arrays = {k: eval_features[k] for k in MODEL_INPUTS}

    def evaluate(eval_on: Any, final: bool, local_batches: Iterable) -> dict[str, float]:
        """The official metrics of the n-best answers over all of a question's windows."""
        out = batches.gather(eval_on, local_batches, num_windows)
        predictions = squad.postprocess(
            eval_examples, eval_features, out["start_logits"], out["end_logits"],
            s.n_best_size, s.max_answer_length, s.version_2, s.null_score_diff_threshold)
        if final and distributed.is_writer():
            write_predictions(paths, predictions, s.version_2)
        if not s.version_2:
            return squad.evaluate_v1(eval_examples, predictions.answers)
        metrics = squad.evaluate_v2(eval_examples, predictions.answers,
                                    predictions.null_score_diff)
        return {k: v for k, v in metrics.items() if not k.endswith("total")}

    def export(params: Any) -> None:
        hf.save_pretrained(model_config, params, export_dir, vocab=paths.vocab, head=HEAD)
        say(f"exported transformers BertForQuestionAnswering to {export_dir}")

    job = ft_job.make_job(config, paths, start, model_config, [], model,
                          train_arrays=train_arrays, eval_arrays=eval_arrays,
                          loss=ft_steps.span_loss, eval_step=ft_steps.span_eval_step,
                          evaluate=evaluate, plots=PLOTS, export=export)
    return engine.run(job, config, workdir)


def write_predictions(paths: workdir_lib.Paths, predictions: squad.Predictions,
                      version_2: bool) -> None:
    """predictions.json, nbest_predictions.json and (v2.0) null_odds.json."""
    files = [(paths.predictions, predictions.answers),
             (paths.nbest_predictions, predictions.nbest)]
    if version_2:
        files.append((paths.null_odds, predictions.null_score_diff))
    for path, content in files:
        write_json(path, content, indent=1, ensure_ascii=False)
