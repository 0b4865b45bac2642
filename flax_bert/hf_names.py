"""transformers' BERT checkpoints: their heads, their tensor names against our param paths
(the mapping table is in hf.py's docstring), and reading their weight files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import numpy as np

from flax_bert import layers
from flax_bert.compute import Compute
from flax_bert.config import BertConfig
from flax_bert.errors import UserError
from flax_bert.heads import (BertForQuestionAnswering, BertForSequenceClassification,
                             BertForTokenClassification)
from flax_bert.model import BertForPreTraining

SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"

Params = dict[str, Any]
Path = tuple[str, ...]

POOLER_GROUP = "bert.pooler"


@dataclasses.dataclass(frozen=True)
class Head:
    """A transformers BERT class: our model for it and the HF names of its task layers.

    Loading, a checkpoint without any tensor of an optional group (the pooler, a task
    layer: a bare `BertModel`, a `BertForMaskedLM`) gets that group freshly initialised,
    with a warning; tensors of another head's groups are dropped, with a warning.
    """

    architecture: str  # transformers class name, also our flax_bert.model class name
    pooler: bool  # whether its encoder has `bert.pooler`
    groups: tuple[str, ...]  # HF name prefixes of its task layers
    labelled: bool  # whether it takes num_labels (its `classifier` has one output per label)

    @property
    def optional_groups(self) -> tuple[str, ...]:
        return ((POOLER_GROUP,) if self.pooler else ()) + self.groups


HEADS = {
    "pretraining": Head("BertForPreTraining", True,
                        ("cls.predictions", "cls.seq_relationship"), False),
    "sequence_classification": Head("BertForSequenceClassification", True, ("classifier",), True),
    "token_classification": Head("BertForTokenClassification", False, ("classifier",), True),
    "question_answering": Head("BertForQuestionAnswering", False, ("qa_outputs",), False),
}
MODEL_CLASSES = (BertForPreTraining, BertForSequenceClassification, BertForTokenClassification,
                 BertForQuestionAnswering)
ALL_GROUPS = tuple(sorted({g for h in HEADS.values() for g in h.optional_groups}))
DEFAULT_NUM_LABELS = 2  # transformers' PretrainedConfig default
# Buffers and aliases that carry no parameter of their own.
IGNORED_SUFFIXES = ("position_ids", "embeddings.token_type_ids")
TIED_DECODER_WEIGHT = "cls.predictions.decoder.weight"
TIED_DECODER_BIAS = "cls.predictions.decoder.bias"


# ----------------------------------------------------------------------------- name mapping

def _linear(hf: str, path: Path) -> Iterator[tuple[str, Path, bool]]:
    yield f"{hf}.weight", path + ("kernel",), True
    yield f"{hf}.bias", path + ("bias",), False


def _layer_norm(hf: str, path: Path) -> Iterator[tuple[str, Path, bool]]:
    yield f"{hf}.weight", path + ("scale",), False
    yield f"{hf}.bias", path + ("bias",), False


def name_map(config: BertConfig, head: str = "pretraining") -> list[tuple[str, Path, bool]]:
    """Every (HF name, our param path, is_dense_kernel) of the model of `head` (HEADS).

    HF names are those of the transformers class (with the `bert.` prefix); dense kernels
    are stored transposed: torch's weight is [out, in], our kernel [in, out]. Encoder
    layers are named per layer, `bert/encoder/layer_i/...`: the layout `per_layer` gives
    our stacked params.
    """
    out: list[tuple[str, Path, bool]] = []
    emb = ("bert", "embeddings")
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        out.append((f"bert.embeddings.{name}.weight", emb + (name, "embedding"), False))
    out += _layer_norm("bert.embeddings.LayerNorm", emb + ("LayerNorm",))
    for i in range(config.num_hidden_layers):
        hf, ours = f"bert.encoder.layer.{i}", ("bert", "encoder", f"layer_{i}")
        for name in ("query", "key", "value"):
            out += _linear(f"{hf}.attention.self.{name}", ours + ("attention", "self", name))
        out += _linear(f"{hf}.attention.output.dense", ours + ("attention", "output", "dense"))
        out += _layer_norm(f"{hf}.attention.output.LayerNorm",
                           ours + ("attention", "output", "LayerNorm"))
        out += _linear(f"{hf}.intermediate.dense", ours + ("intermediate", "dense"))
        out += _linear(f"{hf}.output.dense", ours + ("output", "dense"))
        out += _layer_norm(f"{hf}.output.LayerNorm", ours + ("output", "LayerNorm"))
    if HEADS[head].pooler:
        out += _linear(f"{POOLER_GROUP}.dense", ("bert", "pooler", "dense"))
    if head != "pretraining":  # one dense task layer, named as its group
        (layer,) = HEADS[head].groups
        return out + list(_linear(layer, (layer,)))
    out.append(("cls.predictions.bias", ("cls", "predictions", "bias"), False))
    out += _linear("cls.predictions.transform.dense", ("cls", "predictions", "transform", "dense"))
    out += _layer_norm("cls.predictions.transform.LayerNorm",
                       ("cls", "predictions", "transform", "LayerNorm"))
    out += _linear("cls.seq_relationship", ("cls", "seq_relationship"))
    return out


def group_of(hf_name: str) -> str | None:
    """The optional group (of any head) an HF name belongs to, or None for an encoder
    tensor."""
    return next((g for g in ALL_GROUPS if hf_name.startswith(g + ".")), None)


def get_path(tree: Params, path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: Params, path: Path, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def per_layer(params: Params) -> Params:
    """Params with the encoder's stacked layers split into `layer_i` (see name_map)."""
    encoder = layers.unstack_layers(params["bert"]["encoder"])
    return params | {"bert": params["bert"] | {"encoder": encoder}}


def stacked(params: Params) -> Params:
    """The inverse of `per_layer`: our model's layout."""
    encoder = layers.stack_layers(params["bert"]["encoder"])
    return params | {"bert": params["bert"] | {"encoder": encoder}}


def make_model(config: BertConfig, head: str = "pretraining",
               num_labels: int = DEFAULT_NUM_LABELS, compute: Compute = Compute()) -> Any:
    """Our Linen model of `head` (HEADS), computing as `compute` says."""
    if head not in HEADS:
        raise UserError(f"head {head!r} is unknown; use one of {', '.join(HEADS)}")
    cls = {c.__name__: c for c in MODEL_CLASSES}[HEADS[head].architecture]
    if HEADS[head].labelled:
        return cls(config, compute, num_labels=num_labels)
    return cls(config, compute)


def _init(config: BertConfig, head: str, num_labels: int, seed: int) -> Any:
    import jax
    import jax.numpy as jnp

    ids = jnp.zeros((1, 1), jnp.int32)
    init = jax.jit(make_model(config, head, num_labels).init)  # one compile, not one an op
    return init(jax.random.PRNGKey(seed), ids, ids, ids)["params"]


def param_shapes(config: BertConfig, head: str = "pretraining",
                  num_labels: int = DEFAULT_NUM_LABELS) -> Params:
    """Our param tree's shapes for `config`, per layer (name_map's layout), without
    allocating anything."""
    import flax.linen as nn
    import jax

    shapes = jax.eval_shape(lambda: per_layer(nn.unbox(_init(config, head, num_labels, 0))))
    return jax.tree.map(lambda s: tuple(s.shape), shapes)


def init_params(config: BertConfig, seed: int, head: str = "pretraining",
                 num_labels: int = DEFAULT_NUM_LABELS) -> Params:
    """Freshly initialised params of the model of `head`, as host float32 arrays, per layer
    (name_map's layout)."""
    import flax.linen as nn
    import jax

    params = per_layer(jax.device_get(nn.unbox(_init(config, head, num_labels, seed))))
    return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


# ----------------------------------------------------------------------------- reading

def _read_bf16(path: str, names: list[str]) -> dict[str, np.ndarray]:
    """bfloat16 tensors of a safetensors file as float32 (NumPy has no bfloat16).

    File layout: u64 little-endian header size, JSON header {name: {dtype, shape,
    data_offsets}}, then the data; bf16 is the upper half of a float32's bits.
    """
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        data = f.read()
    out = {}
    for name in names:
        info = header[name]
        start, end = info["data_offsets"]
        bits = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint32) << 16
        out[name] = bits.view(np.float32).reshape(info["shape"])
    return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    bf16: list[str] = []
    try:
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                try:
                    tensors[name] = f.get_tensor(name)
                except TypeError:  # "data type 'bfloat16' not understood".
                    bf16.append(name)
        tensors.update(_read_bf16(path, bf16))
    except Exception as e:  # safetensors raises its own error types for corrupt files.
        raise UserError(f"{path}: cannot read safetensors file ({e}); "
                        f"re-save the checkpoint") from e
    return tensors


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise UserError(f"{path} needs PyTorch to read; pip install torch, or convert the "
                        f"checkpoint to {SAFETENSORS_FILE}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # Pickle/zip errors of a truncated or foreign file.
        raise UserError(f"{path}: cannot read PyTorch checkpoint ({e}); "
                        f"re-save the checkpoint") from e
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def read_weights(hf_dir: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of an HF directory and the file they came from (for error messages)."""
    for single, reader in ((SAFETENSORS_FILE, _read_safetensors), (TORCH_FILE, _read_torch)):
        path = os.path.join(hf_dir, single)
        if os.path.isfile(path):
            return reader(path), path
        index = path + ".index.json"  # Sharded checkpoint: {"weight_map": {name: shard}}.
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                tensors.update(reader(os.path.join(hf_dir, shard)))
            return tensors, index
    raise UserError(f"{hf_dir}: no {SAFETENSORS_FILE} or {TORCH_FILE} found; "
                    f"point to a Hugging Face BERT directory")
