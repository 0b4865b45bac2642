"""What a run prints: lines above the progress bar, and the bar (process 0 alone)."""

from __future__ import annotations

from typing import Any

from flax_bert import distributed


def say(message: str) -> None:
    """Prints a line above the progress bar (process 0)."""
    if distributed.is_writer():
        from tqdm import tqdm
        tqdm.write(message)


def progress_bar(start: int, total: int) -> Any:
    from tqdm import tqdm
    return tqdm(initial=start, total=total, desc="train", unit="step",
                disable=not distributed.is_writer(), dynamic_ncols=True, mininterval=1.0)
