"""Checks a run's config for a TPU slice before the run, on any machine with libtpu:
compiles its train and eval steps for that slice ahead of time and says whether they fit,
what the compiler counts, and how fast the slice could at best run them.

    python -m flax_bert.aot --config configs/base.py --topology v5e-16
    python -m flax_bert.aot --config configs/base.py --topology v5e-16 --search
    python -m flax_bert.aot --config configs/base.py --topology v5e-16 --num-slices 2

The steps are built by the code training uses (`build_steps`: the model, optimizer, state
shardings and jit'd steps of flax_bert/tasks/pretraining.py + flax_bert/trainer/loop.py), on
the mesh train.py would build on that slice (config.mesh; data across slices on several),
from abstract inputs only (ShapeDtypeStructs that carry their shardings; the state from
jax.eval_shape): nothing is allocated and no TPU is needed. JAX compiles for a TPU topology
from libtpu (`jax.experimental.topologies.get_topology_desc`); the CPU stays jax's default
backend.

What it prints, per chip (per TensorCore on v4, whose compile-only topology has one device
a core):
- memory: params, optimizer state, batch (from the shardings), the compiler's arguments,
  outputs and temporaries (`memory_analysis()`), and their total against the chip's HBM
  (flax_bert/tpu_chips.py), with the margin;
- FLOPs of one optimizer step, compiled (`program_counts`: the dots and convolutions of
  the compiled HLO, a convolution's window taps counted where they land on real input,
  each loop body times its trip count, FSDP's windowed all-gather matmul loops included;
  XLA's cost_analysis() counts a while body once, so its "flops" for a call of 4 steps of
  a 12-layer scan is about one layer of one step) against `model_flops` (the analytic
  count);
- a roofline bound on the step time: max(FLOPs / peak, HBM bytes / HBM bandwidth, ICI
  bytes / ICI bandwidth, DCN bytes / DCN bandwidth), the tokens/s and MFU it allows (a
  bound, not a measurement) and which term binds. HBM bytes (`hbm_bytes`): counted in the
  compiled program instruction by instruction, as XLA's cost analysis counts "bytes
  accessed" but with each loop body times its trip count: every top-level instruction
  (a fusion, a copy, a collective, an async copy or slice) of the entry computation, the
  while bodies and the conditionals' branches (both: an upper bound) reads its operands
  and writes its output, those in HBM (a TPU's on-chip VMEM buffers, memory space S(1),
  are not HBM traffic), as laid out in tiles; a fusion's parameter that is only sliced
  (dynamic-slice: one layer's weights or saved activations out of the scan's [L, ...]
  stacks) reads its slices, and an in-place dynamic-update-slice writes its update, not
  its buffer. tests/unit/test_aot.py checks it against a hand count. It counts what the
  schedule moves, not how well the moves overlap: the bound assumes they overlap with
  the compute perfectly;
- the compiler's own `optimal_seconds`, corrected: XLA:TPU's cost model scores each
  ConcatBitcast custom call (which re-joins a weight the schedule prefetched into VMEM
  in async slices; from hidden 512 on) at -1 s, so a program with N of them comes out
  at its estimate - N. The cost model counts the entry and each loop body once and
  skips conditional branches (the non-finite skip's optimizer update);
  `costed_concat_bitcasts` counts the same. Measured on libtpu 0.0.42.1 (benchmarks/README.md): the
  offset equals that count in every program tried. The estimate itself counts a loop
  body once, so it is printed beside the bound, not used in it;
- collectives by kind with their bytes (from the compiled HLO; each counted as often as
  the loops around it run), and on several slices those whose replica groups span slices.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import re
import sys
import time
from typing import Any

import numpy as np

from flax_bert import files, run_config, tpu_chips

# Collective kinds, and the bytes each device sends for a payload of S bytes over a group of
# n devices (ring algorithms): all-reduce 2(n-1)/n S, all-gather and reduce-scatter and
# all-to-all (n-1)/n S (S the full, gathered size), collective-permute S.
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_TRAFFIC = {"all-reduce": lambda n: 2 * (n - 1) / n, "all-gather": lambda n: (n - 1) / n,
            "reduce-scatter": lambda n: (n - 1) / n, "all-to-all": lambda n: (n - 1) / n,
            "collective-permute": lambda n: 1.0}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
BERT_VOCAB_SIZE = 30522  # the vocab of a config that takes its data's (model.vocab_size 0)


def tpu_devices(topology: tpu_chips.Topology, num_slices: int = 1) -> list:
    """Compile-only devices of `num_slices` slices of `topology` (no TPU needed)."""
    from jax.experimental import topologies

    tpu_chips.quiet_libtpu(topology.accelerator_type)
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    return list(topologies.get_topology_desc(topology_name=topology.topology_name,
                                             platform="tpu", **kwargs).devices)


def libtpu_version() -> str:
    from importlib import metadata

    for name in ("libtpu", "libtpu-nightly"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return "?"


# ---- The run's steps, built as training builds them ----------------------------------------
@dataclasses.dataclass
class Shapes:
    """What one phase of the run feeds a train call."""

    seq: int  # tokens a row
    rows: int  # global batch, rows
    predictions: int  # prediction slots a row (P unpacked, M packed)
    packed: bool
    pairs_per_row: int  # K (packed)
    batch_field: str  # the config.train field of `rows`


def phase_shapes(config: Any, phase: int) -> Shapes:
    """The batch shapes of phase `phase` (1: phase1_seq_length at phase1_batch_size; 2:
    data.max_seq_length at global_batch_size), as the data pipeline makes them
    (options.for_phase1, packing.predictions_per_row)."""
    from flax_bert.data import packing
    from flax_bert.errors import UserError

    d, t = config.data, config.train
    seq, rows, field, preds = d.max_seq_length, t.global_batch_size, "global_batch_size", \
        d.max_predictions_per_seq
    if phase == 1:
        if not t.phase1_fraction:
            raise UserError("--phase 1: the config has no phase 1 (config.train."
                            "phase1_fraction is 0); drop --phase")
        seq, rows, field = t.phase1_seq_length, t.phase1_batch_size, "phase1_batch_size"
        preds = math.ceil(d.max_predictions_per_seq * seq / d.max_seq_length)
    if d.packing:
        preds = packing.predictions_per_row(d.masked_lm_prob, seq, d.max_pairs_per_row, preds)
    return Shapes(seq, rows, preds, bool(d.packing), d.max_pairs_per_row, field)


def batch_specs(shapes: Shapes, train: bool) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (global shape, dtype)} of one batch (flax_bert/data/pipeline.py's docstring)."""
    b, s, p, k = shapes.rows, shapes.seq, shapes.predictions, shapes.pairs_per_row
    i32, f32 = np.int32, np.float32
    spec = {"input_ids": ((b, s), i32), "token_type_ids": ((b, s), i32),
            "attention_mask": ((b, s), i32), "masked_positions": ((b, p), i32),
            "masked_ids": ((b, p), i32), "masked_weights": ((b, p), f32)}
    if shapes.packed:
        spec |= {"position_ids": ((b, s), i32), "pair_ids": ((b, s), i32),
                 "cls_positions": ((b, k), i32), "next_sentence_label": ((b, k), i32),
                 "pair_weights": ((b, k), f32)}
    else:
        spec["next_sentence_label"] = ((b,), i32)
        if not train:
            spec["example_weight"] = ((b,), f32)
    return spec


def model_config(config: Any):
    """The run's BertConfig, checked as training checks it; the vocab of a config that takes
    its data's (model.vocab_size 0) is config.data.vocab's (if the file is here) or the
    trained vocab's size, config.data.vocab_size."""
    from flax_bert.trainer import checks

    vocab = config.data.vocab_size
    if config.data.vocab and os.path.isfile(config.data.vocab):
        with open(config.data.vocab, encoding="utf-8") as f:
            vocab = sum(1 for _ in f)
    return checks.model_config(config.model, vocab, config.data.max_seq_length)


def build_steps(config: Any, model_cfg: Any, mesh: Any, seq: int, platform: str = "tpu"):
    """(train_step, eval_step, abstract state): the jit'd steps and the state's shapes (with
    their shardings) exactly as a run builds them (tasks/pretraining.py: the model of
    Compute.from_config(config.train) and its objective; trainer/loop.py:
    optimizer.make_optimizer, create_train_state's shardings, jit_train_step,
    jit_eval_step), with the "auto" compute choices made for `platform`."""
    import jax

    from flax_bert.compute import Compute
    from flax_bert.model import BertForPreTraining
    from flax_bert.tasks.pretraining import PretrainingObjective
    from flax_bert.trainer import optimizer, state as state_lib, step as steps

    t = config.train
    compute = dataclasses.replace(Compute.from_config(t), platform=platform)
    model = BertForPreTraining(model_cfg, compute)
    tx, schedule = optimizer.make_optimizer(config.optimizer, t.steps)
    key = jax.ShapeDtypeStruct((2,), np.uint32)  # jax.random.PRNGKey's
    state, shardings = state_lib.abstract_train_state(model, tx, mesh, key, seq)
    objective = PretrainingObjective(model)
    train_step = steps.jit_train_step(mesh, shardings, objective=objective, tx=tx,
                                      schedule=schedule, grad_accum_steps=t.grad_accum_steps)
    eval_step = steps.jit_eval_step(mesh, shardings.params, objective)
    return train_step, eval_step, state


def check_for_tpu(config: Any, shapes: Shapes, mesh: Any) -> None:
    """What cannot compile, or compiles badly, for a TPU: one UserError line each."""
    from flax_bert.errors import UserError
    from flax_bert.trainer import checks

    checks.check_config(config)
    t = config.train
    if t.attention_impl == "cudnn":
        raise UserError("config.train.attention_impl='cudnn' is a GPU kernel; use 'auto' "
                        "(XLA's fused attention on a TPU) or 'xla'")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = shapes.rows // max(t.grad_accum_steps, 1)
    if shapes.rows % t.grad_accum_steps or micro % shards:
        raise UserError(
            f"config.train.{shapes.batch_field}={shapes.rows} rows over "
            f"grad_accum_steps={t.grad_accum_steps} micro-batches do not split over the "
            f"{shards} data x fsdp shards of the mesh; use a multiple of "
            f"{shards * t.grad_accum_steps}")


# ---- Analytic FLOPs -------------------------------------------------------------------------
def model_flops(model_cfg: Any, rows: int, seq: int, predictions: int,
                pairs: int | None = None) -> float:
    """FLOPs of one optimizer step over `rows` rows of `seq` tokens (2 a multiply-add;
    backward = 2 x forward): 6 N T for the encoder's matmul weights N over the T tokens,
    attention's scores and context 12 L S H a token (the whole S x S, masked or not), the
    MLM head (transform + tied decoder) at `predictions` slots a row and the pooler + NSP
    classifier at `pairs` pairs (default: one a row). The 6 N T of the papers (Kaplan et al.;
    nanoGPT's MFU) with N what each token multiplies; embeddings are gathers."""
    h, i, layers, v = (model_cfg.hidden_size, model_cfg.intermediate_size,
                       model_cfg.num_hidden_layers, model_cfg.vocab_size)
    tokens = rows * seq
    encoder = 6 * (4 * h * h + 2 * h * i) * layers * tokens
    attention = 12 * layers * seq * h * tokens
    mlm = 6 * (h * h + h * v) * rows * predictions
    nsp = 6 * (h * h + 2 * h) * (rows if pairs is None else pairs)
    return float(encoder + attention + mlm + nsp)


# ---- The compiled program: memory, cost, collectives ---------------------------------------
def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of the ShapeDtypeStructs in `tree` (by their shardings)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def cost(compiled: Any) -> dict[str, float]:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return dict(analysis or {})


def _bytes_of(type_text: str, padded: bool = False) -> float:
    """Bytes of the arrays in an HLO type ("f32[8,128]{1,0:T(8,128)}", or a tuple of
    them); `padded`: as laid out in memory, each dimension padded to its layout's tile (a
    TPU's f32[64] takes 128 elements)."""
    total = 0.0
    pattern = r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](?:\{([0-9,]*)(?::T\(([0-9,]+)\))?)?"
    for dtype, dims, layout, tile in re.findall(pattern, type_text):
        if dtype not in _DTYPE_BYTES:
            continue
        shape = [int(d) for d in dims.split(",") if d]
        if padded and tile and shape:
            order = [int(i) for i in layout.split(",") if i] or list(range(len(shape)))[::-1]
            tiles = [int(t) for t in tile.split(",")]
            for dim, t in zip(order, tiles[::-1]):  # the most minor dims take the tile
                shape[dim] = -(-shape[dim] // t) * t
        total += _DTYPE_BYTES[dtype] * math.prod(shape)
    return total


def _groups(line: str) -> list[list[int]] | None:
    """The replica groups (or source-target pairs) of a collective's HLO line: explicit
    ({{0,1},{2,3}}), iota ([2,2]<=[4]T(1,0)) or mesh-axes form (mesh['axis_0'=4,
    'axis_1'=2] {'axis_0'}: each group varies the named axes, device ids row-major)."""
    if m := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line):
        axes = re.findall(r"'([^']+)'=(\d+)", m[1])
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        grouped = [names.index(a) for a in re.findall(r"'([^']+)'", m[2])]
        rest = [i for i in range(len(names)) if i not in grouped]
        ids = np.arange(math.prod(sizes)).reshape(sizes).transpose(rest + grouped)
        return ids.reshape(-1, math.prod(sizes[i] for i in grouped) if grouped else 1).tolist()
    if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line):
        n, size = int(m[1]), int(m[2])
        ids = np.arange(math.prod(int(d) for d in m[3].split(","))).reshape(
            [int(d) for d in m[3].split(",")])
        if m[4]:
            ids = ids.transpose([int(d) for d in m[4].split(",")])
        return ids.reshape(n, size).tolist()
    if m := re.search(r"(?:replica_groups|source_target_pairs)=\{(\{[\d,{} ]*\})\}", line):
        return [[int(x) for x in g.split(",") if x.strip()]
                for g in re.findall(r"\{([\d, ]*)\}", m[1])]
    return None


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its instruction lines}, and the entry computation's name."""
    comps, entry, name = {}, "", None
    for line in hlo.splitlines():
        if m := re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line):
            name = m[2]
            comps[name] = []
            entry = name if m[1] else entry
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps, entry


def _initial_value(line: str, index: int, comps: dict[str, list[str]]) -> int:
    """The constant a while loop's `line` starts tuple element `index` at (through copies),
    else 0."""
    init = re.search(r" while\(%?([\w.\-]+)\)", line)
    name = init[1] if init else ""
    for _ in range(2):  # the tuple, then its element
        text = next((t for lines in comps.values() for t in lines
                     if (m := _INSTRUCTION.match(t)) and m[1] == name), "")
        m = _INSTRUCTION.match(text)
        if not m or m[3] != "tuple":
            break
        elements = _operands(m[4])
        name = elements[index] if index < len(elements) else ""
    while (m := _INSTRUCTION.match(text)) and m[3] == "copy":
        source = _operands(m[4])[0]
        text = next((t for lines in comps.values() for t in lines
                     if (n := _INSTRUCTION.match(t)) and n[1] == source), "")
    c = re.search(r" constant\((-?\d+)\)", text)
    return int(c[1]) if c else 0


def _trip_count(line: str, comps: dict[str, list[str]]) -> int:
    """Iterations of a while loop: its known_trip_count, else the bound its condition
    compares the counter with (lax.scan's `i < N`) less the counter's start (XLA peels a
    loop's first iteration out and starts the rest at 1) over the step the body adds to
    the counter (XLA's windowed matmul loops count by 2)."""
    if m := re.search(r'"known_trip_count":\{"n":"(\d+)"', line):
        return int(m[1])
    cond = re.search(r"condition=%?([\w.\-]+)", line)
    cond_lines = comps.get(cond[1] if cond else "", ())
    bounds = [int(c) for text in cond_lines
              for c in re.findall(r"\b[su]32\[\][^ ]* constant\((\d+)\)", text)]
    step = 1
    body = re.search(r"body=%?([\w.\-]+)", line)
    index = next((int(m[1]) for text in cond_lines
                  if (m := re.search(r"get-tuple-element\(.*\), index=(\d+)", text))), None)
    body_lines = comps.get(body[1] if body else "", [])
    named = {m[1]: text for text in body_lines if (m := _INSTRUCTION.match(text))}
    root = next((t for t in body_lines if t.lstrip().startswith("ROOT") and " tuple(" in t),
                "")
    if index is not None and root:
        outputs = _operands(root.split(" tuple(", 1)[1])
        counter = named.get(outputs[index], "") if index < len(outputs) else ""
        if " add(" in counter:
            for operand in _operands(counter.split(" add(", 1)[1]):
                if c := re.search(r" constant\((\d+)\)", named.get(operand, "")):
                    step = max(int(c[1]), 1)
    start = _initial_value(line, index, comps) if index is not None else 0
    return max(-(-(max(bounds, default=1) - start) // step), 0)


def _runs(comps: dict[str, list[str]], entry: str, loops: bool = True) -> dict[str, int]:
    """How many times each computation runs per call: a while body (and condition) as often
    as its trip count, every other called computation (fusions, branches, calls) as often
    as its caller (both branches of a conditional: an upper bound)."""
    runs: dict[str, int] = {}

    def visit(name: str, times: int) -> None:
        runs[name] = runs.get(name, 0) + times
        for line in comps.get(name, ()):
            trips = _trip_count(line, comps) if loops and " while(" in line else 1
            for key, callee in re.findall(
                    r"\b(body|condition|calls|to_apply|true_computation|false_computation)"
                    r"=%?([\w.\-]+)", line):
                visit(callee, times * (trips if key in ("body", "condition") else 1))
            if m := re.search(r"branch_computations=\{([^}]*)\}", line):
                for callee in m[1].split(","):
                    visit(callee.strip().lstrip("%"), times)

    visit(entry, 1)
    return runs


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s([a-z][a-z0-9\-]*)\((.*)$")


def _operands(args: str) -> list[str]:
    """The %names among an instruction's operands (its text up to the matching paren)."""
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", args[:end])


def _dims(type_text: str) -> list[int]:
    m = re.search(r"\[([0-9,]*)\]", type_text)
    return [int(d) for d in m[1].split(",") if d] if m else []


def program_counts(hlo: str, loops: bool = True) -> dict[str, float]:
    """matmul_flops of the compiled HLO text: 2 x outputs x contracted size of every dot /
    convolution (TPU writes batched and windowed matmuls as convolutions; only the window
    taps that land on real input count, `_matmul_flops`), each loop body counted as often
    as it runs (`loops`; False: once, as XLA's cost_analysis() counts a while body,
    whatever its trip count)."""
    comps, entry = _computations(hlo)
    runs = _runs(comps, entry, loops)
    types: dict[str, str] = {}
    for lines in comps.values():
        for line in lines:
            if m := _INSTRUCTION.match(line):
                types[m[1]] = m[2]
    flops = 0.0
    for comp, lines in comps.items():
        times = runs.get(comp, 0)
        for line in lines if times else ():
            if (m := _INSTRUCTION.match(line)) and m[3] in ("convolution", "dot"):
                operands = _operands(m[4])
                if len(operands) == 2:
                    flops += times * _matmul_flops(line, m[3], m[2], types.get(operands[0], ""),
                                                   types.get(operands[1], ""))
    return {"matmul_flops": flops}


_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\](?:\{([^}]*)\})?")


def _arrays(type_text: str) -> list[tuple[float, int]]:
    """(bytes as laid out, memory space) of each array of an HLO type
    ("bf16[8,128]{1,0:T(8,128)(2,1)S(1)}", or a tuple of them): each dimension padded to
    its layout's tile (a TPU's f32[64] takes 128 elements); memory space 0 is HBM, on a TPU
    1 is the on-chip vector memory (VMEM, S(1)), 2 the scalar memory."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(type_text):
        if dtype not in _DTYPE_BYTES:
            continue
        shape = [int(d) for d in dims.split(",") if d]
        order_text, _, tiling = layout.partition(":")
        tile = re.match(r"T\(([0-9,]+)\)", tiling)
        if tile and shape:
            order = [int(i) for i in order_text.split(",") if i] or list(range(len(shape)))[::-1]
            for dim, t in zip(order, [int(t) for t in tile[1].split(",")][::-1]):
                shape[dim] = -(-shape[dim] // t) * t  # the most minor dims take the tile
        space = re.search(r"S\((\d+)\)", tiling)
        out.append((_DTYPE_BYTES[dtype] * math.prod(shape), int(space[1]) if space else 0))
    return out


def _hbm(type_text: str) -> float:
    """Bytes of an HLO type's arrays that live in HBM (memory space 0)."""
    return sum(b for b, space in _arrays(type_text) if space == 0)


# Instructions that move no data of their own: structure, aliases, the second half of an
# async pair (its start is counted), and TPU custom calls that only re-label a buffer.
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "conditional", "call", "after-all", "partition-id", "replica-id",
               "opt-barrier", "add-dependency", "copy-done", "slice-done", "async-done",
               "all-reduce-done", "all-gather-done", "collective-permute-done", "send-done",
               "recv-done"}
_RELABEL_CALLS = ("AllocateBuffer", "ConcatBitcast", "AssumeGatherIndicesInBound")
_SLICING = ("dynamic-slice", "slice", "gather")


def _fusion_io(name: str, comps: dict[str, list[str]],
               memo: dict[str, tuple[dict[int, float], float]]) -> tuple[dict[int, float], float]:
    """What a fused computation reads of its parameters and writes of its output, where
    that is less than their whole size: {parameter index: bytes read} for a parameter
    only sliced (dynamic-slice / slice / gather: the slices' bytes; the buffer a
    dynamic-update-slice updates in place: 0; through bitcasts and nested fusions), and
    the bytes its output's in-place dynamic-update-slices do not write (their buffer less
    their update). Memoised in `memo`."""
    if name in memo:
        return memo[name]
    params, users, root = {}, {}, None
    ops, callees = {}, {}
    for line in comps.get(name, ()):
        if not (m := _INSTRUCTION.match(line)):
            continue
        inst, out, op, args = m[1], m[2], m[3], m[4]
        ops[inst] = (op, out, _operands(args))
        if op == "fusion" and (c := re.search(r"calls=%?([\w.\-]+)", line)):
            callees[inst] = c[1]
            if "output_to_operand_aliasing" in line:  # a relayout in place: an alias
                ops[inst] = ("bitcast", out, ops[inst][2])
        if op == "parameter":
            params[inst] = int(re.match(r"(\d+)", args)[1])
        for i, operand in enumerate(ops[inst][2]):
            users.setdefault(operand, []).append((inst, i))
        if line.lstrip().startswith("ROOT"):
            root = inst

    def read(value: str) -> float | None:  # bytes read through slicing users, or None
        total = 0.0
        for user, i in users.get(value, ()):
            op, out, _ = ops[user]
            if op == "fusion" and user in callees:
                inner = _fusion_io(callees[user], comps, memo)[0]
                if i not in inner:
                    return None
                total += inner[i]
            elif op == "bitcast":
                sub = read(user)
                if sub is None:
                    return None
                total += sub
            elif op in _SLICING and i == 0:
                total += _hbm(out) if _hbm(out) else sum(b for b, _ in _arrays(out))
            elif op == "dynamic-update-slice" and i == 0:
                pass  # updated in place: not read
            else:
                return None
        return total

    sliced = {}
    for param, index in params.items():
        if (r := read(param)) is not None:
            sliced[index] = r

    def unwritten(out: str) -> float:  # bytes of output `out` an in-place update skips
        op, out_type, operands = ops.get(out, ("", "", []))
        if op == "bitcast":
            return unwritten(operands[0])
        if op == "fusion" and out in callees:
            return _fusion_io(callees[out], comps, memo)[1]
        if op == "dynamic-update-slice":
            update = ops.get(operands[1], ("", "", []))[1]
            return max(_hbm(out_type) - sum(b for b, _ in _arrays(update)), 0.0)
        return 0.0

    outs = ops[root][2] if root and ops[root][0] == "tuple" else [root] if root else []
    memo[name] = sliced, sum(unwritten(out) for out in outs)
    return memo[name]


def hbm_bytes(hlo: str, detail: list | None = None) -> float:
    """HBM bytes one call of the compiled program moves, counted instruction by instruction:
    for each instruction of the entry computation, of the while loops' bodies and of the
    conditionals' branches (each as often as it runs: loops' trip counts, both branches),
    the bytes of its operands it reads and of its output it writes, where they are in HBM
    (memory space 0; a TPU's on-chip VMEM buffers, S(1), are not HBM traffic), as laid out
    in tiles. A fusion is one instruction: its intermediates stay on chip, so it costs its
    operands and its output, less what it does not touch (a parameter only sliced reads its
    slices; an in-place dynamic-update-slice writes its update and does not read its
    buffer). Async pairs count once (their start); copies between HBM and VMEM count their
    HBM side. What XLA's cost_analysis() "bytes accessed" counts, with every loop body
    counted as often as it runs, not once. `detail`, if given, gets (bytes, runs,
    computation, instruction) of each instruction counted: what dominates."""
    comps, entry = _computations(hlo)
    runs = _runs(comps, entry)
    types: dict[str, str] = {}
    for lines in comps.values():
        for line in lines:
            if m := _INSTRUCTION.match(line):
                types[m[1]] = m[2]
    control, todo = set(), [entry]  # computations whose instructions run as themselves
    while todo:
        name = todo.pop()
        if name in control or name not in comps:
            continue
        control.add(name)
        for line in comps[name]:
            todo += re.findall(r"\b(?:body|condition|true_computation|false_computation)="
                               r"%?([\w.\-]+)", line)
            if m := re.search(r"branch_computations=\{([^}]*)\}", line):
                todo += [c.strip().lstrip("%") for c in m[1].split(",")]
            if " call(" in line and (m := re.search(r"to_apply=%?([\w.\-]+)", line)):
                todo.append(m[1])
    fusion_io: dict[str, tuple[dict[int, float], float]] = {}
    total = 0.0
    for comp in control:
        times = runs.get(comp, 0)
        for line in comps[comp] if times else ():
            if not (m := _INSTRUCTION.match(line)):
                continue
            out, op, operands = m[2], m[3], _operands(m[4])
            if op in _NO_TRAFFIC or (op == "custom-call" and any(
                    f'"{t}"' in line for t in _RELABEL_CALLS)):
                continue
            reads = [_hbm(types.get(o, "")) for o in operands]
            write = _hbm(out)
            if op.endswith("-start"):
                # Outputs (operands, results, context): the results; all-reduce-start's is
                # its result alone, copy-start's (destination, source, context).
                parts, n_in = _arrays(out), len(operands)
                result = parts[n_in:2 * n_in] if len(parts) > n_in else parts[:1]
                if op == "copy-start":
                    result = parts[:1]
                write = sum(b for b, space in result if space == 0)
                if op == "slice-start":  # reads only its slice
                    reads = [sum(b for b, _ in result)] if reads and reads[0] else [0.0]
            elif op in _SLICING:
                reads = [min(reads[0], sum(b for b, _ in _arrays(out)))] + reads[1:]
            elif op == "dynamic-update-slice":
                update = _hbm(types.get(operands[1], ""))
                reads, write = [update] + reads[2:], update
            elif op == "fusion" and (c := re.search(r"calls=%?([\w.\-]+)", line)):
                sliced, unwritten = _fusion_io(c[1], comps, fusion_io)
                reads = [min(r, sliced[i]) if i in sliced else r for i, r in enumerate(reads)]
                write = max(write - unwritten, 0.0)
            total += times * (sum(reads) + write)
            if detail is not None:
                detail.append((times * (sum(reads) + write), times, comp, line.strip()))
    return total


def costed_concat_bitcasts(hlo: str) -> int:
    """The ConcatBitcast custom calls XLA:TPU's cost model scores at -1 s each: those in the
    entry computation and in what it calls (each loop body once), not in conditional
    branches."""
    comps, entry = _computations(hlo)

    def count(name: str) -> int:
        lines = comps.get(name, ())
        return sum('custom_call_target="ConcatBitcast"' in line for line in lines) + sum(
            count(callee) for line in lines
            for callee in re.findall(r"\b(?:body|condition|calls|to_apply)=%?([\w.\-]+)", line))

    return count(entry)


def optimal_seconds(raw: float | None, hlo: str) -> tuple[float | None, int]:
    """XLA's optimal_seconds `raw` of the program `hlo` with the -1 s of each costed
    ConcatBitcast added back, and that count (`costed_concat_bitcasts`); None when XLA
    gives no estimate."""
    concat = costed_concat_bitcasts(hlo)
    return (None if raw is None else raw + concat), concat


def program_cost(compiled: Any, hlo: str) -> dict[str, float]:
    """One call's matmul FLOPs (`program_counts`: what a TPU's peak counts) and HBM bytes
    (`hbm_bytes`), every loop body counted as often as it runs, beside XLA's own
    cost_analysis() figures, which count a while body once (here: one of steps_per_call
    steps, one of the encoder's layers, one micro-batch); `loop_scale` is the ratio of the
    matmul FLOPs with and without the loops' trip counts; `optimal_seconds` is corrected
    (`optimal_seconds`)."""
    costs = cost(compiled)
    once, full = program_counts(hlo, loops=False), program_counts(hlo)
    scale = full["matmul_flops"] / once["matmul_flops"] if once["matmul_flops"] else 1.0
    corrected, concat = optimal_seconds(costs.get("optimal_seconds"), hlo)
    return {"flops": full["matmul_flops"], "bytes": hbm_bytes(hlo),
            "xla_flops": float(costs.get("flops", 0.0)),
            "xla_bytes": float(costs.get("bytes accessed", 0.0)), "loop_scale": scale,
            "xla_optimal_seconds": costs.get("optimal_seconds"), "concat_bitcasts": concat,
            "optimal_seconds": corrected}


def _matmul_flops(line: str, op: str, out: str, lhs: str, rhs: str) -> float:
    """2 x outputs x the multiply-adds of each: a dot's contracted size; a convolution's
    input features times, in each spatial dimension, the window taps that land on real
    input (not on padding or between the points of a dilated input; the TPU writes
    batched and windowed matmuls, such as the pieces of an FSDP all-gather matmul, as
    convolutions with small padded windows)."""
    outputs = math.prod(_dims(out))
    if op == "dot":
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        dims = _dims(lhs)
        contracted = math.prod(dims[int(i)] for i in m[1].split(",") if i) if m else 1
        return 2.0 * outputs * contracted
    labels = re.search(r"dim_labels=([^_]*)_([^-]*)->([0-9a-z]*)", line)
    if not labels:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels[1], labels[2], labels[3]
    lhs_dims, rhs_dims, out_dims = _dims(lhs), _dims(rhs), _dims(out)
    taps = float(rhs_dims[rhs_labels.index("i")]) if "i" in rhs_labels else 1.0
    window = re.search(r"window=\{([^}]*)\}", line)
    fields = dict(re.findall(r"(\w+)=([\dx_]+)", window[1])) if window else {}
    spatial = sorted(c for c in lhs_labels if c.isdigit())
    for k, name in enumerate(spatial):
        def part(key: str, default: str) -> str:
            values = fields.get(key, "").split("x")
            return values[k] if k < len(values) and values[k] else default

        n, o = lhs_dims[lhs_labels.index(name)], out_dims[out_labels.index(name)]
        size, stride = int(part("size", "1")), int(part("stride", "1"))
        low = int(part("pad", "0_0").split("_")[0])
        dilate, rhs_dilate = int(part("lhs_dilate", "1")), int(part("rhs_dilate", "1"))
        if o * size > 1_000_000:  # a real convolution: every tap, as before
            taps *= math.ceil(size / dilate)
            continue
        real = sum(1 for i in range(o) for j in range(size)
                   if (p := i * stride + j * rhs_dilate - low) >= 0 and p % dilate == 0
                   and p // dilate < n)
        taps *= real / o
    return 2.0 * outputs * taps


def collectives(hlo: str, slice_of: list[int] | None = None,
                slices: int = 1) -> list[dict[str, Any]]:
    """Each collective of the compiled HLO text: kind, payload bytes S (the full size:
    gathered for all-gather, the input for reduce-scatter), group size, the bytes each
    device sends per call (S times the kind's ring factor times the runs of its loops), and,
    given each device id's slice (`slice_of`), whether its groups span slices."""
    comps, entry = _computations(hlo)
    runs = _runs(comps, entry)
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    found = []
    for comp, lines in comps.items():
        for line in lines:
            if not (m := pattern.search(line)):
                continue
            kind, start, out = m[2], m[3], m[1]
            groups = _groups(line) or []
            n = max((len(g) for g in groups), default=1) if kind != "collective-permute" else 2
            payload = _bytes_of(out)
            if start and kind in ("all-gather", "collective-permute"):
                payload /= 2  # (operand, result) tuple; take the result's share
            if kind == "reduce-scatter":
                payload *= n
            times = runs.get(comp, 0)
            cross = None
            if slice_of is not None and groups:
                cross = any(len({slice_of[i] for i in g}) > 1 for g in groups)
            found.append(dict(kind=kind, bytes=payload, group=n, runs=times,
                              sent=payload * _TRAFFIC[kind](n) * times if n > 1 else 0.0,
                              cross_slice=cross, shape=out[:80]))
    # Between slices XLA:TPU splits a collective: the in-slice part stays a collective (a
    # reduce-scatter, ...), the DCN part becomes host-transfer send/recv pairs that the
    # megascale runtime runs, tagged with the collective's kind.
    for comp, lines in comps.items():
        for line in lines:
            m = re.search(r"=\s*\((.*?)\)\s+send\(.*_xla_megascale_transfer_type=\"(\w+)\"",
                          line)
            if not m:
                continue
            kind = m[2].lower().replace("_", "-")
            payload, times, n = _bytes_of(m[1].split(", u32")[0]), runs.get(comp, 0), slices
            factor = _TRAFFIC.get(kind, lambda _: 1.0)(n)
            found.append(dict(kind=kind, bytes=payload, group=n, runs=times,
                              sent=payload * factor * times, cross_slice=True,
                              shape=m[1][:80]))
    return found


def summarize_collectives(found: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{kind: count, bytes (payload per call), sent (per device per call)} + cross-slice."""
    out: dict[str, dict[str, float]] = {}
    for c in found:
        for key in (c["kind"],) + (("cross-slice " + c["kind"],) if c["cross_slice"] else ()):
            row = out.setdefault(key, {"count": 0, "bytes": 0.0, "sent": 0.0})
            row["count"] += c["runs"]
            row["bytes"] += c["bytes"] * c["runs"]
            row["sent"] += c["sent"]
    return out


# ---- One compile and its report --------------------------------------------------------------
def analyse(config: Any, topology: tpu_chips.Topology, num_slices: int = 1, phase: int = 2,
            with_eval: bool = True, devices: list | None = None) -> dict[str, Any]:
    """Compiles the run's train step (and eval step) for `num_slices` slices of `topology`
    and returns the report (see the module docstring) as a dict."""
    import jax
    from jax._src import config as jax_config

    from flax_bert.trainer import sharding

    chip = topology.chip
    devices = devices or tpu_devices(topology, num_slices)
    if chip.devices_per_chip == 1:
        mesh = sharding.make_mesh(config.mesh, devices)
    else:  # v4's compile-only devices are TensorCores, which jax.make_mesh refuses
        mesh = v4_core_mesh(config.mesh, devices)
    shapes = phase_shapes(config, phase)
    check_for_tpu(config, shapes, mesh)
    model_cfg = model_config(config)
    t, k = config.train, config.train.steps_per_call
    train_step, eval_step, state = build_steps(config, model_cfg, mesh, shapes.seq)

    batch = {key: jax.ShapeDtypeStruct((k,) + shape, dtype,
                                       sharding=sharding.batch_sharding(mesh, stacked=True))
             for key, (shape, dtype) in batch_specs(shapes, train=True).items()}
    rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=sharding.replicated(mesh))
    start = time.perf_counter()
    try:
        # A compile-only executable cannot be loaded back from jax's persistent cache.
        with jax_config.enable_compilation_cache(False):
            compiled = train_step.lower(state, batch, rng).compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return out_of_memory_report(config, topology, num_slices, mesh, shapes, str(e),
                                    time.perf_counter() - start)
    compile_seconds = time.perf_counter() - start

    n_dev = len(devices)
    mem = compiled.memory_analysis()
    params, opt = shard_bytes(state.params), shard_bytes(state.opt_state)
    batch_bytes = shard_bytes(batch)
    args, outs, alias, temps = (mem.argument_size_in_bytes, mem.output_size_in_bytes,
                                mem.alias_size_in_bytes, mem.temp_size_in_bytes)
    code = mem.generated_code_size_in_bytes
    total = args + outs - alias + temps + code
    hbm = chip.per_device(chip.hbm_bytes)

    hlo = compiled.as_text()
    costs = program_cost(compiled, hlo)
    flops_call, bytes_call = costs["flops"], costs["bytes"]  # per device, per call
    compiled_flops_step = flops_call * n_dev / k
    pairs = shapes.rows * (shapes.pairs_per_row if shapes.packed else 1)
    analytic = model_flops(model_cfg, shapes.rows, shapes.seq, shapes.predictions, pairs)

    slice_of = [getattr(d, "slice_index", 0) for d in mesh.devices.flat]
    found = collectives(hlo, slice_of if num_slices > 1 else None, num_slices)
    by_kind = summarize_collectives(found)
    dcn_sent = sum(c["sent"] for c in found if c["cross_slice"])
    ici_sent = sum(c["sent"] for c in found) - dcn_sent

    # The roofline terms of one call, per device; one direction of the ICI links (a device
    # sends on its links while it receives on them).
    terms = {"compute": flops_call / chip.per_device(chip.peak_bf16_flops),
             "hbm": bytes_call / chip.per_device(chip.hbm_bytes_per_s),
             "ici": ici_sent / chip.per_device(chip.ici_bytes_per_s / 2),
             "dcn": dcn_sent / chip.per_device(chip.dcn_bytes_per_s)}
    bound_step = max(terms.values()) / k
    tokens = shapes.rows * shapes.seq
    report = {
        "topology": topology.accelerator_type, "topology_name": topology.topology_name,
        "num_slices": num_slices, "devices": n_dev, "chip": chip.generation,
        "devices_per_chip": chip.devices_per_chip, "libtpu": libtpu_version(),
        "jax": jax.__version__,
        "mesh": dict(mesh.shape), "phase": phase, "seq": shapes.seq,
        "global_batch_rows": shapes.rows, "rows_per_device": shapes.rows / n_dev,
        "packed": shapes.packed, "predictions_per_row": shapes.predictions,
        "steps_per_call": k, "grad_accum_steps": t.grad_accum_steps,
        "remat_policy": t.remat_policy, "dtype": t.dtype, "attention_impl": t.attention_impl,
        "compile_seconds": compile_seconds,
        "memory": {"params": params, "opt_state": opt, "batch": batch_bytes,
                   "arguments": args, "outputs": outs, "aliased": alias, "temporaries": temps,
                   "code": code, "total": total, "hbm": hbm, "fits": total <= hbm,
                   "margin": hbm - total},
        "flops": {"compiled_per_step": compiled_flops_step, "analytic_per_step": analytic,
                  "xla_cost_analysis_per_call_per_device": costs["xla_flops"],
                  "xla_bytes_accessed_per_call_per_device": costs["xla_bytes"],
                  "loop_scale": costs["loop_scale"],
                  "ratio": compiled_flops_step / analytic if analytic else float("nan")},
        "roofline": {"terms_per_step_s": {name: v / k for name, v in terms.items()},
                     "bound_step_s": bound_step,
                     "binding": max(terms, key=terms.get),
                     "tokens_per_s": tokens / bound_step if bound_step else float("inf"),
                     "mfu": analytic / (bound_step * n_dev *
                                        chip.per_device(chip.peak_bf16_flops))
                     if bound_step else float("nan"),
                     "hbm_bytes_per_step": bytes_call / k,
                     "optimal_seconds_per_call": costs["optimal_seconds"],
                     "xla_optimal_seconds_per_call": costs["xla_optimal_seconds"],
                     "concat_bitcasts": costs["concat_bitcasts"]},
        "collectives": by_kind,
    }
    if with_eval:
        eval_batch = {key: jax.ShapeDtypeStruct(shape, dtype,
                                                sharding=sharding.batch_sharding(mesh))
                      for key, (shape, dtype) in batch_specs(shapes, train=False).items()}
        start = time.perf_counter()
        with jax_config.enable_compilation_cache(False):
            compiled_eval = eval_step.lower(state.params, eval_batch).compile()
        em = compiled_eval.memory_analysis()
        etotal = (em.argument_size_in_bytes + em.output_size_in_bytes - em.alias_size_in_bytes
                  + em.temp_size_in_bytes + em.generated_code_size_in_bytes)
        report["eval"] = {"compile_seconds": time.perf_counter() - start,
                          "temporaries": em.temp_size_in_bytes, "total": etotal,
                          "fits": etotal <= hbm,
                          "optimal_seconds": optimal_seconds(
                              cost(compiled_eval).get("optimal_seconds"),
                              compiled_eval.as_text())[0]}
    return report


def v4_core_mesh(mesh_config: Any, devices: list) -> Any:
    """make_mesh's (data, fsdp, tensor) mesh over v4 TensorCores, in the topology's order
    (jax.make_mesh takes one device a chip, as a real v4 runs in megacore mode, but the
    compile-only v4 topology has a device a core)."""
    import jax
    from jax.sharding import Mesh

    from flax_bert.trainer import sharding

    shape = [mesh_config.data, mesh_config.fsdp, mesh_config.tensor]
    if -1 in shape:
        shape[shape.index(-1)] = len(devices) // -math.prod(shape)
    if math.prod(shape) != len(devices):
        raise ValueError(f"config.mesh {dict(zip(sharding.MESH_AXES, shape))} needs "
                         f"{math.prod(shape)} devices, but there are {len(devices)}")
    return Mesh(np.array(devices).reshape(shape), sharding.MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * 3)


def out_of_memory_report(config: Any, topology: tpu_chips.Topology, num_slices: int,
                         mesh: Any, shapes: Shapes, message: str,
                         seconds: float) -> dict[str, Any]:
    """The report of a train step XLA refuses to compile for want of HBM."""
    m = re.search(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM "
                  r"\(([\d.]+)G\)", message)
    need, have = (float(m[1]) * tpu_chips.GiB, float(m[2]) * tpu_chips.GiB) if m else (
        float("nan"), topology.chip.per_device(topology.chip.hbm_bytes))
    return {"topology": topology.accelerator_type, "topology_name": topology.topology_name,
            "num_slices": num_slices, "devices": mesh.size, "chip": topology.chip.generation,
            "devices_per_chip": topology.chip.devices_per_chip, "mesh": dict(mesh.shape),
            "seq": shapes.seq, "global_batch_rows": shapes.rows,
            "rows_per_device": shapes.rows / mesh.size,
            "remat_policy": config.train.remat_policy, "compile_seconds": seconds,
            "out_of_memory": " ".join(message.split())[:300],
            "memory": {"temporaries": need, "total": need, "hbm": have, "fits": False,
                       "margin": have - need},
            "roofline": {"tokens_per_s": 0.0, "mfu": 0.0, "binding": "memory"}}


# ---- Text ---------------------------------------------------------------------------------
def _gib(n: float) -> str:
    return f"{n / tpu_chips.GiB:.2f} GiB"


def fit_line(r: dict[str, Any]) -> str:
    """One line: whether the train step fits, and by how much."""
    m = r["memory"]
    what = "chip" if r["devices_per_chip"] == 1 else "TensorCore"
    if m["fits"]:
        return (f"fits: {_gib(m['total'])} of {_gib(m['hbm'])} HBM a {what} "
                f"({_gib(m['margin'])} free)")
    return (f"does not fit: the train step needs {_gib(m['total'])} a {what}, "
            f"{_gib(-m['margin'])} more than its {_gib(m['hbm'])} HBM; lower the rows per "
            f"device, raise config.mesh.fsdp, or set config.train.remat_policy")


def format_report(r: dict[str, Any]) -> str:
    if "out_of_memory" in r:
        return (f"{r['topology']}, mesh {r['mesh']}, {r['rows_per_device']:g} rows a device, "
                f"remat {r['remat_policy']}: XLA's temporaries alone exceed the HBM\n  "
                + fit_line(r))
    m, f, roof = r["memory"], r["flops"], r["roofline"]
    what = "chip" if r["devices_per_chip"] == 1 else "TensorCore (v4: 2 a chip)"
    slices = f" x {r['num_slices']} slices" if r["num_slices"] > 1 else ""
    lines = [
        f"{r['topology']}{slices} ({r['topology_name']}, {r['devices']} devices), mesh "
        f"{r['mesh']}; phase {r['phase']}: seq {r['seq']}, {r['global_batch_rows']} rows "
        f"({r['rows_per_device']:g} a device{', packed' if r['packed'] else ''}), "
        f"{r['steps_per_call']} steps a call, grad_accum {r['grad_accum_steps']}, remat "
        f"{r['remat_policy']}, {r['dtype']}; compiled in {r['compile_seconds']:.0f} s "
        f"(libtpu {r['libtpu']})",
        f"memory a {what}:",
        f"  params {_gib(m['params'])}, optimizer state {_gib(m['opt_state'])}, batch "
        f"{_gib(m['batch'])}",
        f"  arguments {_gib(m['arguments'])} + outputs {_gib(m['outputs'])} - donated "
        f"{_gib(m['aliased'])} + temporaries {_gib(m['temporaries'])} + code "
        f"{_gib(m['code'])} = {_gib(m['total'])}",
        "  " + fit_line(r),
        f"FLOPs an optimizer step: compiled (matmuls) {f['compiled_per_step']:.4g}, analytic "
        f"(6 N T + attention) {f['analytic_per_step']:.4g}: ratio {f['ratio']:.3f}",
        "roofline bound on a step (a bound, not a measurement):",
        "  " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in roof["terms_per_step_s"].items()),
        f"  -> {roof['bound_step_s'] * 1e3:.2f} ms a step ({roof['binding']}-bound): at most "
        f"{roof['tokens_per_s']:,.0f} tokens/s, MFU at most {roof['mfu']:.1%}",
    ]
    opt, concat = roof["optimal_seconds_per_call"], roof["concat_bitcasts"]
    if opt is not None and opt > 0:
        lines.append(f"  compiler's optimal_seconds: {opt * 1e3:.2f} ms a call, each loop body "
                     f"counted once (one of the {r['steps_per_call']} steps, one layer)" + (
                         f"; {concat} ConcatBitcast calls' -1 s each added back" if concat
                         else ""))
    elif opt is not None:
        lines.append(f"  compiler's optimal_seconds: {roof['xla_optimal_seconds_per_call']:g} "
                     f"(negative, with {concat} ConcatBitcast calls at -1 s each: no estimate)")
    lines.append("collectives a call (bytes: payload; sent: per device):")
    if not r["collectives"]:
        lines.append("  none")
    for kind, row in sorted(r["collectives"].items()):
        lines.append(f"  {kind}: {row['count']:.0f}, {row['bytes'] / 1e6:,.1f} MB, sent "
                     f"{row['sent'] / 1e6:,.1f} MB")
    if "eval" in r:
        e = r["eval"]
        lines.append(f"eval step: {_gib(e['total'])} a device (temporaries "
                     f"{_gib(e['temporaries'])}), {'fits' if e['fits'] else 'does NOT fit'}; "
                     f"compiled in {e['compile_seconds']:.0f} s")
    return "\n".join(lines)


# ---- Search -----------------------------------------------------------------------------------
def mesh_grid(devices: int, num_slices: int, tensor_max: int = 4) -> list[tuple[int, int, int]]:
    """(data, fsdp, tensor) meshes to try: all data; all fsdp (within a slice); data x
    fsdp halves; data x tensor 2 and 4 (tensor within a slice, at most `tensor_max`)."""
    per_slice = devices // num_slices
    out = [(devices, 1, 1), (num_slices, per_slice, 1)]
    if per_slice >= 4:
        out.append((devices // (per_slice // 2), per_slice // 2, 1))
    for tp in (2, 4):
        if tp <= tensor_max and per_slice % tp == 0 and per_slice > tp:
            out.append((devices // tp, 1, tp))
    return list(dict.fromkeys(out))


def search(config: Any, topology: tpu_chips.Topology, num_slices: int, phase: int,
           meshes: list[tuple[int, int, int]], rows_per_device: list[int],
           remats: list[str], say=print) -> list[dict[str, Any]]:
    """Compiles the train step for each mesh x rows per device x remat policy; returns
    the reports (ranked: those that fit, by the tokens/s their bound allows)."""
    from flax_bert.errors import UserError

    devices = tpu_devices(topology, num_slices)
    reports = []
    field = phase_shapes(config, phase).batch_field
    for mesh_shape, rows, remat in itertools.product(meshes, rows_per_device, remats):
        trial = copy_config(config)
        trial.mesh.data, trial.mesh.fsdp, trial.mesh.tensor = mesh_shape
        trial.train[field] = rows * len(devices)
        trial.train.remat_policy = remat
        label = (f"mesh {mesh_shape}, {rows} rows a device, remat {remat}")
        try:
            r = analyse(trial, topology, num_slices, phase, with_eval=False, devices=devices)
        except (UserError, ValueError) as e:
            say(f"  {label}: skipped ({e})")
            continue
        r["flags"] = (f"--config.mesh.data={mesh_shape[0]} --config.mesh.fsdp={mesh_shape[1]} "
                      f"--config.mesh.tensor={mesh_shape[2]} --config.train.{field}="
                      f"{rows * len(devices)} --config.train.remat_policy={remat}")
        reports.append(r)
        roof = r["roofline"]
        say(f"  {label}: {_gib(r['memory']['total'])} "
            f"({'fits' if r['memory']['fits'] else 'does not fit'}), bound "
            f"{roof['tokens_per_s']:,.0f} tokens/s ({roof['binding']}-bound, MFU <= "
            f"{roof['mfu']:.1%}), compiled in {r['compile_seconds']:.0f} s")
    return sorted(reports, key=lambda r: (not r["memory"]["fits"],
                                          -r["roofline"]["tokens_per_s"]))


def copy_config(config: Any) -> Any:
    import ml_collections

    return ml_collections.ConfigDict(config.to_dict())


# ---- CLI ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, Any]:
    """This module's flags (argparse) and the run's config (--config FILE and --config.*
    overrides, parsed by ml_collections as train.py parses them)."""
    parser = argparse.ArgumentParser(prog="python -m flax_bert.aot", description=(
        "Compile a run's train and eval steps for a TPU slice (no TPU needed) and report "
        "memory, FLOPs, a roofline bound and collectives."))
    parser.add_argument("--config", required=True,
                        help="the run's config file (configs/X.py); --config.FIELD=VALUE "
                             "overrides its fields, as in train.py")
    parser.add_argument("--topology", required=True,
                        help="v5e-16, v5litepod-16, v4-8, v5p-32, v6e-8, or v5e:4x4")
    parser.add_argument("--num-slices", type=int, default=1,
                        help="slices joined by the data-center network (data spans them)")
    parser.add_argument("--phase", type=int, default=2, choices=(1, 2),
                        help="2: data.max_seq_length at global_batch_size (default); 1: "
                             "phase1_seq_length at phase1_batch_size")
    parser.add_argument("--no-eval", action="store_true", help="skip the eval step")
    parser.add_argument("--search", action="store_true",
                        help="compile a grid of meshes x rows a device x remat policies and "
                             "rank those that fit by the tokens/s their bound allows")
    parser.add_argument("--meshes", default="",
                        help="--search's meshes, 'data,fsdp,tensor;...' (default: a few)")
    parser.add_argument("--rows-per-device", default="",
                        help="--search's rows a device, comma separated (default: the "
                             "config's and twice it)")
    parser.add_argument("--remat", default="",
                        help="--search's remat policies, comma separated (default: the "
                             "config's and nothing_saveable)")
    parser.add_argument("--json", default="", help="also write the report(s) to this file")
    own, rest = parser.parse_known_args(argv[1:])
    config_args = [a for a in rest if a.startswith("--config.")]
    if unknown := [a for a in rest if not a.startswith("--config.")]:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    return own, run_config.load([f"--config={own.config}", *config_args], parser.prog)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    from flax_bert.errors import UserError

    try:
        args, config = parse_args(argv)
        topology = tpu_chips.parse(args.topology)
        if args.num_slices < 1:
            raise ValueError(f"--num-slices {args.num_slices}: must be >= 1")
        if args.search:
            reports = run_search(args, config, topology)
        else:
            reports = [analyse(config, topology, args.num_slices, args.phase,
                               with_eval=not args.no_eval)]
            print(format_report(reports[0]))
    except (UserError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if args.json:
        files.write_json(args.json, reports if args.search else reports[0], indent=1,
                         default=float)
    return 0 if args.search or reports[0]["memory"]["fits"] else 1


def run_search(args: argparse.Namespace, config: Any, topology: tpu_chips.Topology) -> list:
    from flax_bert.errors import UserError

    shapes = phase_shapes(config, args.phase)
    devices = topology.chips * topology.chip.devices_per_chip * args.num_slices
    meshes = ([tuple(int(x) for x in m.split(",")) for m in args.meshes.split(";")]
              if args.meshes else mesh_grid(devices, args.num_slices))
    per = max(shapes.rows // devices, 1)
    rows = [int(x) for x in args.rows_per_device.split(",")] if args.rows_per_device \
        else [per, 2 * per]
    remats = args.remat.split(",") if args.remat else list(dict.fromkeys(
        [config.train.remat_policy, "nothing_saveable"]))
    print(f"search on {topology.accelerator_type}: {len(meshes)} meshes x {len(rows)} rows "
          f"a device x {len(remats)} remat policies")
    reports = search(config, topology, args.num_slices, args.phase, meshes, rows, remats)
    fitting = [r for r in reports if r["memory"]["fits"]]
    if not fitting:
        raise UserError("--search: nothing in the grid fits; try fewer rows a device "
                        "(--rows-per-device) or --remat nothing_saveable")
    best = fitting[0]
    print(f"best: mesh {best['mesh']}, {best['rows_per_device']:g} rows a device, remat "
          f"{best['remat_policy']}: at most {best['roofline']['tokens_per_s']:,.0f} tokens/s "
          f"({best['roofline']['binding']}-bound, MFU <= {best['roofline']['mfu']:.1%}; a "
          f"bound, not a measurement)")
    print(f"python train.py --config CONFIG {best['flags']}")
    return reports


if __name__ == "__main__":
    sys.exit(main())
