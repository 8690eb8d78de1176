"""Figures other stages leave under figures/<stage>/ (t-SNE maps, overlays, ...), with captions from their names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Words that a plain capitalisation would spell wrongly in a caption.
_SPELLING = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA", "iou": "IoU", "unet": "U-Net", "cm": "confusion matrix",
             "simclr": "SimCLR", "barlow": "Barlow", "twins": "Twins", "vs": "vs", "em": "EM", "tem": "TEM"}


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


def caption_from_name(path: str | Path) -> str:
    """'tsne_simclr-n80.png' -> 't-SNE SimCLR n80': words split at _ - . and spaces, known terms spelt right."""
    words = [w for w in re.split(r"[_\-.\s]+", Path(path).stem) if w]
    if not words:
        return Path(path).name
    spelt = [_SPELLING.get(w.lower(), w) for w in words]
    if words[0].lower() not in _SPELLING:
        spelt[0] = spelt[0][:1].upper() + spelt[0][1:]
    return " ".join(spelt)


def collect_figures(folder: str | Path) -> list[Figure]:
    """Every PNG directly in or below `folder`, sorted by path; an absent folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [Figure(p, caption_from_name(p)) for p in sorted(folder.rglob("*.png")) if p.is_file()]
