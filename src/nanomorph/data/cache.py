"""Decode images once: a memory-mapped float32 cache of resized image stacks, keyed by content.

`cached_images(paths, size, cache_dir)` returns what `nanomorph.data.io.load_image_stack(paths, size)`
returns -- float32 (N, size, size) in [0, 1], row i from paths[i] -- but decodes and resizes only on the first
call: the stack is stored as `<cache_dir>/<key>.npy` and later calls memory-map it (read-only), so a large
set is neither decoded again nor held in memory twice.

The key is a sha256 over the sha256 of every file's bytes (in order), the side, the pixel limit, this
module's DECODER_VERSION and the versions of the decoding libraries. File names and dates play no part: an
edited or replaced image changes the key (a stale stack is never served), while a renamed or copied set still
hits. Bump DECODER_VERSION whenever nanomorph.data.io changes how pixels are decoded, scaled or resized.

Writes are atomic: the stack and its sidecar `<key>.json` (files skipped as unreadable, with the reason) are
written under temporary names and renamed into place, the stack last, so a crash leaves no entry or a whole
one, and processes filling the same entry concurrently cannot corrupt it. Entries are never modified, only
added; deleting the directory is always safe (it costs one decode).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from nanomorph.data.io import DEFAULT_MAX_PIXELS, file_digest, load_image_stack
from nanomorph.errors import ImageReadError

DECODER_VERSION = 1
_DECODING_LIBRARIES = ("numpy", "pillow", "tifffile", "scikit-image")


@dataclass(frozen=True)
class CachedImages:
    """A cached stack: `images[i]` is decoded from `paths[i]`; `skipped` lists the unreadable files and why."""

    images: np.ndarray
    paths: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]
    key: str


def cache_key(file_digests: Sequence[str], size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The entry's name: everything that determines the stack's values, and nothing else."""
    recipe = {
        "decoder": DECODER_VERSION, "libraries": {name: version(name) for name in _DECODING_LIBRARIES},
        "size": int(size), "max_pixels": int(max_pixels), "files": list(file_digests),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _digest(path: Path) -> str:
    try:
        return file_digest(path)
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None


def _write_entry(paths: Sequence[Path], size: int, max_pixels: int, stack_path: Path, meta_path: Path) -> None:
    """Decode every file into a temporary .npy, then rename the sidecar and the stack into place."""
    readable, skipped = [], []
    for index, path in enumerate(paths):
        try:
            image = load_image_stack([path], size, max_pixels)[0]  # the very decoder of the uncached path
        except ImageReadError as exc:
            skipped.append((index, exc.reason))
            continue
        readable.append(image)
    unique = f".{os.getpid()}-{uuid.uuid4().hex}.tmp"
    tmp_stack, tmp_meta = stack_path.with_name(stack_path.name + unique), meta_path.with_name(meta_path.name + unique)
    try:
        stack = np.lib.format.open_memmap(tmp_stack, mode="w+", dtype=np.float32, shape=(len(readable), size, size))
        for row, image in enumerate(readable):
            stack[row] = image
        stack.flush()
        del stack  # close the mapping before the rename
        tmp_meta.write_text(json.dumps({"size": size, "rows": len(readable), "files": len(paths),
                                        "skipped": skipped, "decoder": DECODER_VERSION}))
        os.replace(tmp_meta, meta_path)
        os.replace(tmp_stack, stack_path)  # last: a stack on disk always has its sidecar
    finally:
        for tmp in (tmp_stack, tmp_meta):
            tmp.unlink(missing_ok=True)


def cached_images(paths: Sequence[str | Path], size: int, cache_dir: str | Path, *, skip_unreadable: bool = False,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> CachedImages:
    """The (N, size, size) float32 stack of `paths`, decoded on the first call and memory-mapped after.

    An unreadable file raises ImageReadError, or with `skip_unreadable` is left out (its row is absent) and
    listed in `skipped` with the reason. A file that cannot even be read for hashing counts as unreadable.
    """
    paths = [Path(p) for p in paths]
    cache_dir = Path(cache_dir)
    digests: list[str | None] = []
    unhashable: dict[int, str] = {}
    for index, path in enumerate(paths):
        try:
            digests.append(_digest(path))
        except ImageReadError as exc:
            if not skip_unreadable:
                raise
            digests.append(None)
            unhashable[index] = exc.reason
    hashable = [i for i, d in enumerate(digests) if d is not None]
    key = cache_key([digests[i] for i in hashable], size, max_pixels)
    stack_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not (stack_path.is_file() and meta_path.is_file()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        _write_entry([paths[i] for i in hashable], size, max_pixels, stack_path, meta_path)
    meta = json.loads(meta_path.read_text())
    skipped_in_entry = {hashable[index]: reason for index, reason in meta["skipped"]}
    if skipped_in_entry and not skip_unreadable:
        index, reason = next(iter(skipped_in_entry.items()))
        raise ImageReadError(paths[index], reason)
    images = np.load(stack_path, mmap_mode="r")
    skipped = {**unhashable, **skipped_in_entry}
    kept = tuple(paths[i] for i in hashable if i not in skipped_in_entry)
    if images.shape != (len(kept), size, size) or images.dtype != np.float32:
        raise ValueError(f"{stack_path}: cache entry of shape {images.shape} does not match its {len(kept)} "
                         "files; delete it")
    return CachedImages(images=images, paths=kept, skipped=tuple((paths[i], skipped[i]) for i in sorted(skipped)),
                        key=key)


def cached_image_stack(paths: Sequence[str | Path], size: int, cache_dir: str | Path,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`load_image_stack(paths, size)` through the cache: a read-only memory-mapped float32 (N, size, size)."""
    return cached_images(paths, size, cache_dir, max_pixels=max_pixels).images
