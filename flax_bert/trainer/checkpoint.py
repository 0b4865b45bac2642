"""Checkpoints: training checkpoints in a run folder, and params-only exports.

A run folder's `checkpoints/<step>/` (trainer/run_folder.py names the run folder's paths)
holds one orbax folder per item:
    params/              the parameter pytree (float32): all `load_params` reads
    opt_state/           the optimizer state
    train/               the other TrainState fields (step, nonfinite_run) + `rng`
    data/                the grain train-iterator state (its next batch index)

An export directory holds:
    config.json              BertConfig in HF field names
    params/                  orbax PyTree checkpoint of the parameter pytree (float32)

Saves are async (training goes on while the files are written) and atomic: orbax writes
`<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a crash mid-save leaves
the older checkpoints as they were. Restores go newest first; a checkpoint that cannot be
read is moved to `checkpoints_broken/` with a warning and the next older one is tried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
import traceback
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from flax_bert import distributed, layers
from flax_bert.config import BertConfig
from flax_bert.errors import UserError
from flax_bert.trainer import run_folder as workdir_lib
from flax_bert.trainer.run_folder import CONFIG_FILE

PARAMS_DIR = "params"
ARRAY_ITEMS = ("params", "opt_state", "train")  # orbax Standard items of a train checkpoint
DATA_ITEM = "data"
LEGACY_LAYER = "layer_0"  # the encoder's first layer, in params saved before it was stacked


class SaveFailed(UserError):
    """A checkpoint could not be written (e.g. the disk is full); older ones are intact."""


def warn(message: str) -> None:
    if distributed.is_writer():
        print(f"warning: {message}", file=sys.stderr, flush=True)


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


def _handlers() -> dict[str, Any]:
    handlers = {name: ocp.StandardCheckpointHandler() for name in ARRAY_ITEMS}
    handlers[DATA_ITEM] = grain.checkpoint.CheckpointHandler()
    return handlers


def load_params(path: str) -> Any:
    """Parameters as host NumPy arrays, from an export directory, a workdir (its newest
    readable checkpoint) or one checkpoint folder `WORKDIR/checkpoints/<step>`.

    Only the `params` item is read; the optimizer state is never opened. Params saved
    with one set per encoder layer (`encoder/layer_i`, before the layers were one scan)
    come back stacked (`encoder/layers`), as the model now takes them.
    """
    path = os.path.abspath(path)
    directory = workdir_lib.Paths(path).checkpoints
    if os.path.isdir(directory):
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        with ocp.CheckpointManager(directory, options=options,
                                   item_handlers={"params": ocp.StandardCheckpointHandler()}
                                   ) as manager:
            steps = sorted(manager.all_steps(), reverse=True)
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {directory}")
            for step in steps:
                try:
                    params = manager.restore(step, args=ocp.args.Composite(
                        params=ocp.args.StandardRestore())).params
                    break
                except Exception as e:  # a broken newest checkpoint: try the previous one
                    warn(f"{directory}/{step} cannot be read ({type(e).__name__}); "
                         f"trying an older checkpoint")
            else:
                raise FileNotFoundError(f"no readable checkpoint in {directory}")
    else:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(os.path.join(path, PARAMS_DIR))
    params = jax.tree.map(np.asarray, params)
    encoder = params.get("bert", {}).get("encoder", {})
    if LEGACY_LAYER in encoder:
        params["bert"]["encoder"] = layers.stack_layers(encoder)
    return params


def _shapes(tree: Any) -> list[tuple[str, tuple[int, ...]]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(jax.tree_util.keystr(p), tuple(getattr(x, "shape", ()))) for p, x in leaves]


class TrainCheckpointer:
    """orbax CheckpointManager for the train state, RNG key and data iterator of a workdir."""

    def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict):
        self.paths = workdir_lib.Paths(workdir)
        self.workdir = self.paths.root
        self.directory = self.paths.checkpoints
        self.every = ckpt_config.every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=ckpt_config.keep,
            enable_async_checkpointing=ckpt_config.async_save, create=True,
            cleanup_tmp_directories=True)  # leftovers of a save cut short by a crash
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=_handlers())
        self._saving: int | None = None  # the step of the save in flight
        self._closed = False
        _drop_closed_loop_callbacks()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    @staticmethod
    def _split(state: Any, rng: jax.Array) -> dict[str, Any]:
        """TrainState -> the array items: params, opt_state, train (other fields + rng)."""
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        params, opt_state = fields.pop("params"), fields.pop("opt_state")
        return {"params": params, "opt_state": opt_state, "train": dict(fields, rng=rng)}

    def _check_shapes(self, step: int, abstract: dict[str, Any]) -> None:
        """Raises UserError if the checkpoint holds another model (not a broken file)."""
        try:
            metadata = self.manager.item_metadata(step)
            saved_params, saved_opt = metadata["params"], metadata["opt_state"]
        except Exception:  # unreadable metadata: treated as a broken checkpoint by restore
            return
        if saved_params is not None:
            old, new = _shapes(saved_params), _shapes(abstract["params"])
            if any(f"['{LEGACY_LAYER}']" in name for name, _ in old):
                raise UserError(
                    f"{self.directory}/{step} holds one param set per encoder layer "
                    f"(encoder/{LEGACY_LAYER}, ...), written before the layers were stacked "
                    f"(encoder/{layers.LAYERS}), and cannot be resumed; carry its weights "
                    f"into a new workdir: python -m flax_bert.hf export --workdir "
                    f"{self.workdir} OUT, then python -m flax_bert.hf import OUT --workdir NEW")
            if old != new:
                diff = [(a, b) for a, b in zip(old, new) if a != b] or [(old[:1], new[:1])]
                (name, old_shape), (_, new_shape) = diff[0]
                raise UserError(
                    f"{self.directory}/{step} holds another model (param {name} has shape "
                    f"{old_shape}, the config gives {new_shape}); use the workdir's model "
                    f"config or a new --workdir")
        if saved_opt is not None:
            old = sorted(shape for _, shape in _shapes(saved_opt))
            new = sorted(shape for _, shape in _shapes(abstract["opt_state"]))
            if old != new:
                raise UserError(
                    f"{self.directory}/{step} holds another optimizer state than "
                    f"config.optimizer makes ({len(old)} vs {len(new)} arrays); use the "
                    f"workdir's optimizer config or a new --workdir")

    def _move_aside(self, step: int) -> str:
        """Moves a broken checkpoint to checkpoints_broken/ (kept for inspection)."""
        target_dir = self.paths.broken_checkpoints
        target = os.path.join(target_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if distributed.is_writer():
            os.makedirs(target_dir, exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), target)
        distributed.barrier(f"moved checkpoint {step}")
        self.manager.reload()
        return target

    def restore(self, state: Any, rng: jax.Array,
                data_iter: Any) -> tuple[Any, jax.Array, int | None]:
        """Restores the newest readable checkpoint into the shardings of `state`; also moves
        `data_iter` to where it was. Returns (state, rng, step), step None if none exists.

        A checkpoint that fails to restore is moved to checkpoints_broken/ and the next
        older one is tried, so orbax's `max_to_keep` never counts a broken one.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._split(state, rng))
        for step in sorted(self.manager.all_steps(), reverse=True):
            self._check_shapes(step, abstract)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    **{k: ocp.args.StandardRestore(v) for k, v in abstract.items()},
                    **{DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iter)}))
            except Exception as e:
                reason = " ".join(str(e).split())[:200]
                moved = self._move_aside(step)
                warn(f"checkpoint {self.directory}/{step} is broken ({type(e).__name__}: "
                     f"{reason}); moved it to {moved}; falling back to an older checkpoint")
                continue
            train = dict(restored["train"])
            rng = train.pop("rng")
            return state.replace(params=restored["params"], opt_state=restored["opt_state"],
                                 **train), rng, step
        return state, rng, None

    def save(self, step: int, state: Any, rng: jax.Array, data_iter: Any,
             force: bool = False) -> bool:
        """Starts an (async) save if `step` is due (or `force`); returns whether it did.
        Called every step: raises SaveFailed as soon as an earlier async save has failed."""
        due = (force or step % self.every == 0) and step not in self.manager.all_steps()
        if due or not self.manager.is_saving_in_progress():
            self.wait()  # raises if the last save failed (orbax's save would wait too)
        if not due:
            return False
        items = self._split(state, rng)
        self._check_space(step, items)
        self._saving = step
        with self._stop_if_failed():
            return self.manager.save(step, force=True, args=ocp.args.Composite(
                **{k: ocp.args.StandardSave(v) for k, v in items.items()},
                **{DATA_ITEM: grain.checkpoint.CheckpointSave(data_iter)}))

    def _check_space(self, step: int, items: dict[str, Any]) -> None:
        """SaveFailed now, at the step of the save, when the disk has less room than the
        checkpoint takes (the newest one's size, or the arrays' bytes): a save that fails
        in the background is seen a step or more later, and the metric rows written
        meanwhile can take the last bytes first. One local process only (hosts sharing a
        folder must fail together)."""
        if jax.process_count() > 1 or "://" in self.directory:
            return
        newest = self.manager.latest_step()
        need = (_folder_bytes(os.path.join(self.directory, str(newest))) if newest is not None
                else sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(items)))
        if shutil.disk_usage(self.directory).free < need:
            raise self._failed(step, "the disk is full", f", the checkpoint needs "
                                                        f"{need / 2**20:.1f} MiB")

    @contextlib.contextmanager
    def _stop_if_failed(self) -> Iterator[None]:
        """A failed save of step `self._saving` -> SaveFailed (one line). orbax never
        deletes an older checkpoint before the newer one is committed, and leaves the
        partial one as `<step>.orbax-checkpoint-tmp*`, which `all_steps` skips and the
        next run's manager deletes."""
        try:
            yield
        except Exception as e:
            full = workdir_lib.is_disk_full(e)
            if not (full or isinstance(e, OSError)):
                raise  # not the storage: a bug, keep its traceback
            raise self._failed(self._saving, "the disk is full" if full
                               else f"{type(e).__name__}: {e}") from e

    def _failed(self, step: int | None, cause: str, needs: str = "") -> SaveFailed:
        """The one-line error of a failed save of `step`, naming the checkpoint kept."""
        self._saving = None
        self.manager.reload()  # forget the failed step
        last = self.manager.latest_step()
        kept = (f"the last good checkpoint is {self.directory}/{last}" if last is not None
                else "no checkpoint was saved yet")
        return SaveFailed(
            f"saving checkpoint step {step} in {self.directory} failed: {cause} "
            f"({workdir_lib.free_space(self.directory)}{needs}); {kept}; free space, then "
            f"rerun the same command to resume")

    def wait(self) -> None:
        """Blocks until the in-flight save (if any) is committed; SaveFailed if it failed."""
        with self._stop_if_failed():
            self.manager.wait_until_finished()
        self._saving = None

    def close(self) -> None:
        """Waits for the save in flight to commit, then closes (again: a no-op)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self.manager.close()


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _drop_closed_loop_callbacks() -> None:
    """Hides the tracebacks of a failed save's stragglers: orbax closes a save's event
    loop as soon as one of its writes fails (e.g. the disk is full), and tensorstore's
    completions of the writes still in flight then land on the closed loop, each printing
    'RuntimeError: Event loop is closed' through sys.unraisablehook. The save's own error
    is reported (SaveFailed); other unraisable errors go to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable: Any) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback)
        if not (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"
                and any(f.name == "call_soon_threadsafe" for f in frames)):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook
