"""GLUE from one pretrained model: each chosen task at each chosen learning rate is its own
fine-tuning run (flax_bert.tasks.glue.task) in WORKDIR/<TASK>/lr_<LR>/; each task keeps
the learning rate of its best dev score; then the results (glue_results.json), GLUE's
submission files (WORKDIR/submission/) and the table with the GLUE score.

    python finetune.py --config configs/glue.py --workdir runs/glue \
        --config.init.checkpoint=runs/default --config.glue.data_dir=GLUE_DIR

Rerunning the command continues it: a finished run (its results.json) is read back, not
trained again; an interrupted one resumes from its checkpoint. Every chosen task's data is
read, and any mistake in it reported, before anything trains.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import ml_collections

from flax_bert import distributed, files
from flax_bert.console import say
from flax_bert.errors import UserError
from flax_bert.tasks import model_start
from flax_bert.tasks.glue import data as glue, metrics as glue_metrics, task as glue_task
from flax_bert.trainer import loop
from flax_bert.trainer.run_folder import Paths


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or continues) the GLUE runs in `workdir`; returns glue_results.json's content."""
    with loop.run_folder(config, workdir) as workdir:
        return _glue(config, workdir)


def chosen_tasks(names: str) -> list[glue.Task]:
    """The tasks of config.glue.tasks ("CoLA,RTE"; any spelling), in its order."""
    tasks = [glue.get_task(name.strip()) for name in names.split(",") if name.strip()]
    tasks = list({task.name: task for task in tasks}.values())  # each once, first place
    if not tasks:
        raise UserError(f"config.glue.tasks is empty; name some of {', '.join(glue.GLUE_TASKS)}")
    if glue_task.DIAGNOSTIC.name in {task.name for task in tasks}:
        raise UserError("config.glue.tasks: AX has no train set; the MNLI run predicts it "
                        "(DATA_DIR/diagnostic/diagnostic.tsv) when MNLI is chosen")
    return tasks


def learning_rates(text: str) -> list[float]:
    """The learning rates of config.glue.learning_rates ("5e-5,3e-5,2e-5")."""
    try:
        rates = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        rates = []
    if not rates or min(rates) <= 0:
        raise UserError(f"config.glue.learning_rates {text!r}: give positive numbers separated "
                        f"by commas, e.g. 2e-5 or 5e-5,3e-5,2e-5")
    return list(dict.fromkeys(rates))


def _glue(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    g, paths = config.glue, Paths(workdir)
    tasks, rates = chosen_tasks(g.tasks), learning_rates(g.learning_rates)
    if not g.data_dir:
        raise UserError("config.glue.data_dir is ''; pass GLUE_DIR (download_glue_data.py's "
                        "folder) or a folder of the tasks' `datasets` save_to_disk folders")
    start = model_start.resolve_start(config, glue_task.HEAD)
    folders = {(task.name, rate): paths.glue_run(task.name, rate)
               for task in tasks for rate in rates}
    for task in tasks:  # a rerun continues from the same start
        for rate in rates:
            model_start.check_run_folder(folders[task.name, rate], start, list(task.labels))
    pending = [task.name for task in tasks
               if not all(glue_task.is_finished(folders[task.name, rate]) for rate in rates)]
    for task in tasks:  # mistakes in any task's files before anything trains
        if task.name in pending:
            glue_task.read_task(g.data_dir, task)
    runs = {}
    for task in tasks:
        data = glue_task.read_task(g.data_dir, task) if task.name in pending else None
        for rate in rates:
            folder = folders[task.name, rate]
            if glue_task.is_finished(folder):
                say(f"{task.name} at learning rate {rate:g}: finished; results read from "
                    f"{Paths(folder).results}")
                runs[task.name, rate] = glue_task.read_results(folder)
            else:
                runs[task.name, rate] = glue_task.run(config, folder, start, data, rate)
    results = summarize(runs, [task.name for task in tasks], rates, start.description)
    if distributed.is_writer():
        results["submission_files"] = collect_submissions(
            [folders[name, rate] for name, rate in results["learning_rate"].items()],
            paths.submission)
        files.write_json(paths.glue_results, results, indent=1)
        say(glue_metrics.format_table(results["dev"]))
        say(f"dev results in {paths.glue_results}; "
            f"{len(results['submission_files'])} submission files in {paths.submission}")
    distributed.barrier("GLUE results written")
    return results


def summarize(runs: dict[tuple[str, float], dict[str, Any]], tasks: list[str],
              rates: list[float], start: str) -> dict[str, Any]:
    """Each task at the learning rate of its best dev score (the first listed on a tie):
    the dev results of those runs (percent, by evaluation name: MNLI-m, MNLI-mm, ...), the
    learning rates, every run's score, the GLUE score and the BERT paper's average (None
    until all 9 tasks are in)."""
    chosen = {task: max(rates, key=lambda rate: runs[task, rate]["score"]) for task in tasks}
    dev = {name: metrics for task in tasks
           for name, metrics in runs[task, chosen[task]]["dev"].items()}
    return {"start": start, "dev": dev, "learning_rate": chosen,
            "sweep": {task: {f"{rate:g}": runs[task, rate]["score"] for rate in rates}
                      for task in tasks},
            "glue_score": glue_metrics.glue_score(dev),
            "bert_paper_average": glue_metrics.bert_paper_average(dev)}


def collect_submissions(folders: list[str], out_dir: str) -> list[str]:
    """Copies the submission files of the run folders (each task's chosen run) into
    out_dir; returns their names."""
    os.makedirs(out_dir, exist_ok=True)
    names = []
    for folder in folders:
        source = Paths(folder).submission
        for name in sorted(os.listdir(source)) if os.path.isdir(source) else []:
            shutil.copyfile(os.path.join(source, name), os.path.join(out_dir, name))
            names.append(name)
    return names
