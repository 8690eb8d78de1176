"""Content-keyed cache of frozen-encoder features.

Features depend on exactly six things, and the cache key is a hash of all six:
  * the encoder's weights (a hash of every tensor of its state dict, BatchNorm statistics included, plus
    its architecture), not its file name or time stamp: a retrained encoder with new weights misses the
    cache, an untouched one hits it even if its file was rewritten;
  * the resolution the images are resized to, and the encoder stages pooled;
  * the image set: the content hashes of the images, in order (the validate stage's sha256 column);
  * the extraction code itself (source of `extract_features` and `normalise`, and the torch version), so a
    change to how features are computed invalidates every entry;
  * where they were computed: the device kind and, on CUDA, whether TF32 matmuls/convolutions were allowed
    (`arithmetic`), since GPU features differ from CPU ones beyond float32 rounding.
An entry is `<name>_seed<s>_<key>.npy` beside a `.json` sidecar holding the key's parts; `index.json` lists
the entries of the last run. An entry whose sidecar key or row count does not match is recomputed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nanomorph.models.encoder import normalise
from nanomorph.probe.features import extract_features

INDEX = "index.json"


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 of the encoder's weights: every state-dict tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    digest.update(f"{type(encoder).__name__}:{getattr(encoder, 'arch', '')}:{getattr(encoder, 'in_channels', '')}"
                  .encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def extractor_fingerprint() -> str:
    """sha256 of the feature-extraction code and the torch version."""
    source = inspect.getsource(extract_features) + inspect.getsource(normalise) + torch.__version__
    return hashlib.sha256(source.encode()).hexdigest()


def image_set_fingerprint(content_hashes: Sequence[str]) -> str:
    """sha256 of the images' own content hashes in order (order matters: feature row i is image i)."""
    if len(content_hashes) == 0:
        raise ValueError("an image set needs at least one image")
    return hashlib.sha256("\n".join(str(h) for h in content_hashes).encode()).hexdigest()


def arithmetic(device: str | torch.device) -> str:
    """How features are computed on `device`, as far as it changes their values: `cpu` (float32), `cuda-fp32`
    or `cuda-tf32` (TF32 matmuls or convolutions allowed), or the device kind for any other."""
    kind = torch.device(device).type
    if kind != "cuda":
        return kind
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return "cuda-tf32" if tf32 else "cuda-fp32"


@dataclass(frozen=True)
class CacheEntry:
    name: str
    encoder_seed: int
    key: str
    file: str
    hit: bool


class FeatureCache:
    """Features on disk under `root`, looked up by content key; `get_or_extract` computes on a miss."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(encoder_hash: str, image_size: int, image_set_hash: str,
            stages: tuple[str, ...] = ("layer4",), dihedral: bool = False,
            device: str | torch.device = "cpu") -> dict[str, str | int]:
        parts: dict[str, str | int] = {"encoder": encoder_hash, "image_size": int(image_size),
                                       "image_set": image_set_hash, "extractor": extractor_fingerprint(),
                                       "arithmetic": arithmetic(device)}
        if tuple(stages) != ("layer4",):  # the default keeps the keys of caches written before stages existed
            parts["stages"] = ",".join(stages)
        if dihedral:
            parts["dihedral"] = 1
        parts["key"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return parts

    def _paths(self, name: str, encoder_seed: int, key: str) -> tuple[Path, Path]:
        stem = f"{name}_seed{encoder_seed}_{key[:16]}"
        return self.root / f"{stem}.npy", self.root / f"{stem}.json"

    def lookup(self, name: str, encoder_seed: int, parts: dict, n_images: int) -> np.ndarray | None:
        """The cached features for these key parts, or None when absent or not matching."""
        array_path, meta_path = self._paths(name, encoder_seed, str(parts["key"]))
        if not (array_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            features = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if meta.get("key") != parts["key"] or features.ndim != 2 or len(features) != n_images:
            return None
        return features

    def stored(self, name: str, encoder_seed: int, encoder: nn.Module, image_size: int, image_set_hash: str,
               n_images: int, device: str = "cpu", stages: tuple[str, ...] = ("layer4",),
               dihedral: bool = False) -> np.ndarray | None:
        """The features `get_or_extract` would return, if they are stored; never extracts or writes (for the
        stages that read what the probe stage cached)."""
        parts = self.key(encoder_fingerprint(encoder), image_size, image_set_hash, stages, dihedral, device)
        return self.lookup(name, encoder_seed, parts, n_images)

    def get_or_extract(self, name: str, encoder_seed: int, encoder: nn.Module, image_size: int,
                       image_set_hash: str, n_images: int, load_images: Callable[[], np.ndarray],
                       batch_size: int = 64, device: str = "cpu", progress: bool = False,
                       stages: tuple[str, ...] = ("layer4",), dihedral: bool = False
                       ) -> tuple[np.ndarray, CacheEntry]:
        """Cached features of `encoder` on the image set, extracting (and storing) them on a miss.

        `load_images` is called only on a miss, so a fully cached run never decodes an image.
        """
        parts = self.key(encoder_fingerprint(encoder), image_size, image_set_hash, stages, dihedral, device)
        array_path, meta_path = self._paths(name, encoder_seed, str(parts["key"]))
        features = self.lookup(name, encoder_seed, parts, n_images)
        hit = features is not None
        if features is None:
            images = load_images()
            if len(images) != n_images or images.shape[1:] != (image_size, image_size):
                raise ValueError(f"expected {n_images} images of {image_size} px, got shape {images.shape}")
            features = extract_features(encoder, images, batch_size=batch_size, device=device, progress=progress,
                                        stages=stages, dihedral=dihedral)
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = array_path.with_name(array_path.name + ".tmp")
            with open(tmp, "wb") as handle:
                np.save(handle, features, allow_pickle=False)
            os.replace(tmp, array_path)
            meta_path.write_text(json.dumps({**parts, "name": name, "encoder_seed": int(encoder_seed),
                                             "n_images": int(n_images)}, indent=2, sort_keys=True) + "\n")
        entry = CacheEntry(name, int(encoder_seed), str(parts["key"]), array_path.name, hit)
        return features, entry

    def write_index(self, entries: Sequence[CacheEntry], prune: bool = True) -> Path:
        """Record this run's entries in index.json; with `prune`, delete every other entry under root."""
        self.root.mkdir(parents=True, exist_ok=True)
        keep = {e.file for e in entries} | {e.file.replace(".npy", ".json") for e in entries} | {INDEX}
        if prune:
            for path in self.root.iterdir():
                if path.is_file() and path.name not in keep:
                    path.unlink()
        index = {"entries": [{"encoder": e.name, "encoder_seed": e.encoder_seed, "key": e.key, "file": e.file}
                             for e in entries]}
        path = self.root / INDEX
        path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return path


def load_indexed_features(root: str | Path) -> dict[tuple[str, int], np.ndarray]:
    """{(encoder, encoder_seed): features} of the last run recorded in `root`/index.json."""
    root = Path(root)
    index_path = root / INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: no feature index; run the probe stage first")
    entries = json.loads(index_path.read_text())["entries"]
    return {(e["encoder"], int(e["encoder_seed"])): np.load(root / e["file"], allow_pickle=False) for e in entries}
