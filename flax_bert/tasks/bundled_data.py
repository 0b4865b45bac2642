"""The bundled tasks (the book task, the cloze task): a job's data when config.data names
none, built into the run folder from the chapters pretraining held out."""

from __future__ import annotations

import os
from typing import Any, Callable

from flax_bert import distributed
from flax_bert.console import say
from flax_bert.errors import UserError


def data_paths(data: Any, name: str, build: Callable[[str], dict[str, int]], out_dir: str,
               files: tuple[str, str]) -> tuple[str, str]:
    """(train, eval): config.data's train and eval files, or, when both are '', the files
    (train, eval names) of the bundled task `name` that build(out_dir) writes."""
    if bool(data.train) != bool(data.eval):
        raise UserError(f"set both config.data.train and config.data.eval (a held-out file), "
                        f"or neither ({name})")
    if data.train:
        return data.train, data.eval
    if distributed.is_writer():
        counts = build(out_dir)
        say(f"{name} in {out_dir}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    distributed.barrier(f"{name} built")
    return os.path.join(out_dir, files[0]), os.path.join(out_dir, files[1])
