"""The prepared folder: file names, meta.json, and the checks that its files are whole.

Layout (local or `gs://`):
  vocab.txt
  {split}-{fingerprint}-{group:05d}-{part:05d}.arrayrecord   one shard of records
  phase1/      a run's phase-1 data when its config trains one: the same input, split and
               vocab in shorter examples, itself a prepared folder of this layout
  meta.json    written last; lists every file with its byte size and CRC-32, the shards
               of each split in order with their record counts, and its own CRC-32; says
               whether the folder is packed (a record is then a row of up to
               max_pairs_per_row pairs), each split's rows (= records, also
               num_{split}_examples), pairs and real-token fraction

The fingerprint (of the options and the input files) is in every shard name, so shards
of another prepare are told apart from leftovers of this one. Checks: `load_meta` checks
meta.json, every file's size and vocab.txt's checksum (seconds even for big data);
`verify_shard` checks a shard's checksum, which the pipeline does when it first reads it.
A missing, truncated or altered file is one UserError naming it.
"""

from __future__ import annotations

import json
import os
import zlib

from etils import epath

from flax_bert import files
from flax_bert.data import storage
from flax_bert.errors import UserError

FORMAT_VERSION = 2  # 1 was one .npy per field; bump when the layout changes.
META = "meta.json"
VOCAB = "vocab.txt"
SHARD_SUFFIX = ".arrayrecord"
SPLITS = ("train", "eval")
SELF_CRC = "meta_crc32"
PHASE1 = "phase1"  # the subfolder of a run's phase-1 data


def phase1_folder(folder: str) -> str:
    """Where a prepared folder keeps its run's phase-1 data."""
    return os.path.join(folder, PHASE1)


def shard_name(split: str, fingerprint: str, group: int, part: int) -> str:
    return f"{split}-{fingerprint}-{group:05d}-{part:05d}{SHARD_SUFFIX}"


def is_shard(name: str) -> bool:
    return name.endswith(SHARD_SUFFIX) and name.split("-", 1)[0] in SPLITS


def fingerprint_of(name: str) -> str:
    return name.split("-")[1]


def fix_hint(folder) -> str:
    return f"re-run prepare with --force (or delete {folder})"


def interrupted(folder) -> str:
    """What a prepare into `folder` stopped by a signal says (preemption.Watch's message)."""
    return (f"prepare of {folder} interrupted ({{signal}}); rerun the same command to resume: "
            f"its shards are overwritten and meta.json is written last, so a half-prepared "
            f"folder is never used")


def _meta_crc(meta: dict) -> int:
    body = {k: v for k, v in meta.items() if k != SELF_CRC}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def write_meta(folder: epath.Path, meta: dict) -> dict:
    """Write meta.json with its own checksum, whole (flax_bert.files); returns
    what was written."""
    meta = {**meta, SELF_CRC: _meta_crc(meta)}
    files.write_json(folder / META, meta, indent=2)
    return meta


def read_meta(folder: epath.Path) -> dict | None:
    """meta.json of a folder after its own checksum; None when there is none."""
    p = folder / META
    if not p.exists():
        if (folder / "train" / "input_ids.npy").exists():
            raise UserError(f"{folder}: prepared by an older version (.npy files); "
                            f"delete the folder and re-run prepare")
        return None
    meta = None
    try:
        meta = json.loads(p.read_text())
        ok = isinstance(meta, dict) and meta.get(SELF_CRC) == _meta_crc(meta)
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        if isinstance(meta, dict) and "format_version" not in meta and SELF_CRC not in meta:
            raise UserError(f"{p}: prepared by an older version (.npy files); "
                            f"delete {folder} and re-run prepare")
        raise UserError(f"{p}: truncated or altered (its checksum does not match); "
                        f"{fix_hint(folder)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise UserError(f"{p}: format {meta['format_version']}, this version reads "
                        f"{FORMAT_VERSION}; delete {folder} and re-run prepare")
    return meta


def load_meta(prepared_dir: str) -> dict:
    """meta.json of a prepared folder, after checking every file's size and vocab.txt's
    checksum (vocab_size, max_seq_length, counts, shards, options, ...)."""
    folder = storage.path(prepared_dir)
    meta = read_meta(folder)
    if meta is None:
        raise UserError(f"{folder / META}: not found; run python -m flax_bert.data.prepare "
                        f"--output {prepared_dir}")
    for name, info in meta["files"].items():
        p = folder / name
        if not p.exists():
            _check_same_prepare(folder, meta)
            raise UserError(f"{p}: missing; {fix_hint(folder)}")
        size = p.stat().length
        if size != info["bytes"]:
            _check_same_prepare(folder, meta)
            raise UserError(f"{p}: {size} bytes, meta.json says {info['bytes']} (truncated "
                            f"or altered); {fix_hint(folder)}")
    verify_file(folder, VOCAB, meta)
    return meta


def _check_same_prepare(folder: epath.Path, meta: dict) -> None:
    """A UserError naming meta.json when the folder holds shards but none that it lists:
    it is another prepare's (copied over), not the files it finds wrong."""
    here = sorted(p.name for p in folder.iterdir() if is_shard(p.name))
    if here and not set(here) & set(meta["files"]):
        raise UserError(f"{folder / META}: another prepare's (fingerprint {meta['fingerprint']}"
                        f"), not of the shards here ({here[0]}, ...); {fix_hint(folder)}")


def verify_file(folder: epath.Path, name: str, meta: dict) -> None:
    """A UserError when the file's CRC-32 differs from meta.json's."""
    p = folder / name
    if storage.crc32(p) != meta["files"][name]["crc32"]:
        raise UserError(f"{p}: altered (its checksum differs from meta.json's); "
                        f"{fix_hint(folder)}")
