"""Paths for prepared data and corpora: local or `gs://`, through `etils.epath`.

`gs://` needs the GCS filesystem (`pip install gcsfs`); without it every use of such a
path is one `UserError` naming it. Checksums are zlib's CRC-32 (fast; catches a cut or
flipped byte, which is what a failed copy or disk does).
"""

from __future__ import annotations

import zlib

from etils import epath

from flax_bert.errors import UserError

CHUNK = 1 << 22  # Bytes read at a time when checksumming.


def path(p: str | epath.Path) -> epath.Path:
    """An epath.Path; a `gs://` path without the GCS filesystem is a UserError."""
    out = epath.Path(p)
    if str(p).startswith("gs://"):
        try:
            import gcsfs  # noqa: F401  (epath's backend for gs://)
        except ImportError:
            raise UserError(
                f"{p}: gs:// paths need the GCS filesystem; pip install gcsfs "
                f"(or copy the data to a local folder)"
            ) from None
    return out


def crc32(p: epath.Path) -> int:
    """CRC-32 of a file's bytes."""
    crc = 0
    with p.open("rb") as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def describe(p: epath.Path) -> dict:
    """{"bytes", "crc32"} of a file, as meta.json lists it."""
    return {"bytes": p.stat().length, "crc32": crc32(p)}
