"""Pretraining checkpoints: written atomically, refused when they belong to another run, and read by rank 0 and
broadcast to every rank.

What a checkpoint holds and when it is written is the loop's business (nanomorph.ssl.train).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist

from nanomorph.models.weights import load_weights
from nanomorph.ssl.distributed import Ranks

CHECKPOINT_FORMAT = 3  # 2: views seeded per image position; accumulation and BatchNorm groups recorded;
#                        3: no wall-clock throughput in the history or the running epoch sums


def save_checkpoint(path: Path, blob: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(blob, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint of another run: resuming it would silently mix two configurations."""
    diffs = {k: (saved.get(k), current.get(k)) for k in sorted(current.keys() | saved.keys())
             if saved.get(k) != current.get(k)}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {old!r} vs now {new!r}" for k, (old, new) in diffs.items())
        raise ValueError(f"{path} belongs to a different pretraining run ({detail}); delete it to start afresh")


def load_checkpoint(path: Path | None, ranks: Ranks) -> dict[str, Any] | None:
    """Rank 0's checkpoint, if any, on every rank (broadcast: other ranks need not see rank 0's files)."""
    blob = None
    if ranks.main and path is not None and Path(path).exists():
        blob = load_weights(path)
    if ranks.world > 1:
        holder = [blob]
        dist.broadcast_object_list(holder, src=0)
        blob = holder[0]
    return blob
