"""Whole-file writes: a reader (a rerun after a kill included) sees the old file or the new
one, never half of one.

Every result, meta and task file is written through here: the bytes go to a temporary
file beside the target (same folder, so same filesystem), which then replaces the target
in one rename. A `gs://` path (prepared data) goes through `etils.epath` the same way: a
temporary object beside it, then a rename.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


def _is_remote(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """A temporary local path beside `path` to write (by any writer: open, savefig,
    copyfile); it replaces `path` when the block ends without an error, and is removed
    when it raises."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` (local, or `gs://` through epath), replacing it whole."""
    name = str(path)
    if _is_remote(name):
        from etils import epath

        target = epath.Path(name)
        tmp = target.parent / f"{target.name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        tmp.rename(target)
        return
    with replacing(name) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path`, replacing it whole."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> None:
    """Writes `json.dumps(obj, **json_kwargs)` to `path`, replacing it whole."""
    write_text(path, json.dumps(obj, **json_kwargs))
