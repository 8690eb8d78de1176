"""The pyfunc input contract (see `nanomorph.serving`): DataFrame rows -> gray [0, 1] images; resizing."""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.transform import resize

from nanomorph.data.io import read_image, to_unit_range

INPUT_COLUMNS = ("path", "image")


def _is_missing(value: object) -> bool:
    """pandas fills absent cells with None or NaN; an array cell is never 'missing'."""
    if value is None:
        return True
    return isinstance(value, float) and np.isnan(value)


def _array_image(value: object, row: int) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError:  # numpy refuses ragged nested lists (rows of different lengths)
        raise ValueError(f"row {row}: 'image' is not a rectangular 2-D array") from None
    if array.dtype == object:
        raise ValueError(f"row {row}: 'image' is not a rectangular 2-D array")
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"row {row}: 'image' must be a 2-D gray array, got shape {array.shape}")
    if array.dtype in (np.uint8, np.uint16):
        return to_unit_range(array)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"row {row}: 'image' has unsupported pixel type {array.dtype}")
    # Other integers (raw 0-255 values sent as Python numbers, say) are intensities too, so [0, 1] applies;
    # the float rule is io.to_unit_range's, the same as for files.
    try:
        return to_unit_range(array.astype(np.float32))
    except ValueError as exc:
        raise ValueError(f"row {row}: 'image' {exc}") from None


def images_from_frame(frame: pd.DataFrame) -> list[np.ndarray]:
    """One float32 (H, W) image in [0, 1] per row, from its `path` or its `image` cell.

    Raises ValueError naming the row when a row sets neither or both, and `ImageReadError` naming the file
    when a path cannot be decoded.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"model input must be a pandas DataFrame, got {type(frame).__name__}")
    present = [c for c in INPUT_COLUMNS if c in frame.columns]
    if not present:
        raise ValueError(f"model input needs a 'path' or an 'image' column, got columns {list(frame.columns)}")
    images = []
    for row, record in enumerate(frame[present].itertuples(index=False, name=None)):
        cells = {c: v for c, v in zip(present, record) if not _is_missing(v)}
        if len(cells) != 1:
            raise ValueError(f"row {row}: set exactly one of 'path' and 'image' (got {sorted(cells) or 'neither'})")
        if "path" in cells:
            images.append(read_image(str(cells["path"])))
        else:
            images.append(_array_image(cells["image"], row))
    return images


def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """size x size float32 in [0, 1]: bilinear, anti-aliased, like `nanomorph.data.io.load_image_stack`,
    so a served model sees its inputs prepared exactly as its training images were."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    out = resize(image, (size, size), order=1, anti_aliasing=True, preserve_range=True, mode="reflect")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask resized to `shape` by nearest neighbour (keeps it binary and keeps thin wires)."""
    if mask.shape == tuple(shape):
        return mask.astype(bool, copy=False)
    out = resize(mask.astype(np.float32), shape, order=0, anti_aliasing=False, preserve_range=True, mode="reflect")
    return out > 0.5
