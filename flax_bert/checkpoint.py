"""Params-only exports: a model's weights and its config.json, no optimizer state.

Layout of an export directory:
    config.json   BertConfig in HF field names
    params/       orbax PyTree checkpoint of the parameter pytree (float32)
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flax_bert.config import BertConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_params(path: str, config: BertConfig, params: Any) -> None:
    """Writes `params` and `config` to the export directory `path` (must not hold params)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(path, PARAMS_DIR), params)
    config.to_json_file(os.path.join(path, CONFIG_FILE))


def load_config(path: str) -> BertConfig:
    return BertConfig.from_json_file(os.path.join(path, CONFIG_FILE))


def load_params(path: str) -> Any:
    """The parameter pytree of an export directory, as host NumPy arrays."""
    path = os.path.abspath(path)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(path, PARAMS_DIR))
    return jax.tree.map(np.asarray, params)
