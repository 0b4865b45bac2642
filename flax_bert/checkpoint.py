"""Checkpoints: training checkpoints in a workdir, and params-only exports.

A workdir holds:
    config.json              the model's BertConfig (HF field names)
    checkpoints/<step>/      orbax: `state` (TrainState) and `data` (grain iterator state)
    pretrained/              optional export dir: initial weights (see flax_bert.hf import)

An export directory holds:
    config.json              BertConfig in HF field names
    params/                  orbax PyTree checkpoint of the parameter pytree (float32)
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from flax_bert.config import BertConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
PRETRAINED_DIR = "pretrained"


def save_params(path: str, config: BertConfig, params: Any) -> None:
    """Writes `params` and `config` to the export directory `path` (must not hold params)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), params)
    config.to_json_file(os.path.join(path, CONFIG_FILE))


def load_config(path: str) -> BertConfig:
    """The BertConfig of a workdir or an export directory."""
    return BertConfig.from_json_file(os.path.join(path, CONFIG_FILE))


def load_params(path: str) -> Any:
    """Parameters as host NumPy arrays, from an export directory or from the newest
    training checkpoint of a workdir (only the `params` subtree is read)."""
    path = os.path.abspath(path)
    if not os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        with ocp.StandardCheckpointer() as ckptr:
            return jax.tree.map(np.asarray, ckptr.restore(os.path.join(path, PARAMS_DIR)))
    with ocp.CheckpointManager(os.path.join(path, CHECKPOINTS_DIR)) as manager:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path}/{CHECKPOINTS_DIR}")
    state_dir = os.path.join(path, CHECKPOINTS_DIR, str(step), "state")
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.metadata(state_dir).item_metadata.tree
        target = {"params": jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree["params"])}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    return restored["params"]


class TrainCheckpointer:
    """orbax CheckpointManager for the train state and the data iterator of one workdir."""

    def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ckpt_config.keep, save_interval_steps=ckpt_config.every,
            enable_async_checkpointing=ckpt_config.async_save, create=True)
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, state: Any, data_iter: Any) -> tuple[Any, int | None]:
        """Restores the newest checkpoint into the shardings of `state`; also moves
        `data_iter` to where it was. Returns (state, step) or (state, None) if none."""
        step = self.manager.latest_step()
        if step is None:
            return state, None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(data_iter)))
        return restored.state, step

    def save(self, step: int, state: Any, data_iter: Any, force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iter)), force=force)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
