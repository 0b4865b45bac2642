"""Files written whole: a reader (or a rerun after a crash) sees the old file or the new
one, never a part (a temporary file in the same folder, then os.replace)."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A temporary path beside `path` to write; it replaces `path` when the body ends
    without an error, and is removed otherwise."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with replacing(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, **dump_kwargs))
