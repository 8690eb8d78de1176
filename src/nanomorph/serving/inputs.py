"""The pyfunc input contract (see `nanomorph.serving`): DataFrame rows -> gray [0, 1] images; resizing.

Inside a model server (`mlflow models serve`, which marks its process as a serving environment) a `path` row
would make the server open a file of the client's choosing on the server's host, so there `path` rows are
refused unless the server was started with NANOMORPH_SERVING_PATH_ROOT=DIR, and then only files under DIR
(after resolving `..` and symbolic links) are read. In-process callers read paths as given.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.transform import resize

from nanomorph.data.io import read_image, to_unit_range

INPUT_COLUMNS = ("path", "image")
SERVING_PATH_ROOT_ENV = "NANOMORPH_SERVING_PATH_ROOT"


def in_serving_environment() -> bool:
    """True inside MLflow's scoring server (it sets this flag before loading the model)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())


def allowed_path(value: object, row: int) -> str:
    """The file a `path` row may read: as given in-process; in a server only under SERVING_PATH_ROOT_ENV."""
    if not in_serving_environment():
        return str(value)
    root = os.environ.get(SERVING_PATH_ROOT_ENV)
    if not root:
        raise ValueError(f"row {row}: this served model reads no files on the server; send the image itself in "
                         f"the 'image' column (or start the server with {SERVING_PATH_ROOT_ENV}=DIR)")
    base = Path(root).resolve()
    target = (base / str(value)).resolve()  # an absolute value replaces base; `..` and links are resolved
    if not target.is_relative_to(base):
        raise ValueError(f"row {row}: path '{value}' is outside the folder this server may read")
    return str(target)


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
            images.append(read_image(allowed_path(cells["path"], row)))
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
