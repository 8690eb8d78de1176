"""Reading microscopy images and masks into numpy, with one clear error per unreadable file.

Images become float32 grayscale in [0, 1], scaled by their storage type's range (not by their own min/max,
so relative brightness between images survives). Masks become bool. Any file that cannot be used raises
`ImageReadError(path, reason)`: empty, undecodable or truncated, not a 2-D image, or larger than
`max_pixels` -- checked from the header before any pixel is decoded, so a decompression bomb costs nothing.
PIL's own guard (`Image.MAX_IMAGE_PIXELS`, about 1.8e8 pixels for a hard error) still applies on top for
non-TIFF files; it is a process-wide setting, so this module leaves it alone.
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageOps, UnidentifiedImageError
from skimage.color import rgb2gray
from skimage.transform import resize

from nanomorph.errors import ImageReadError

DEFAULT_MAX_PIXELS = 100_000_000
TIFF_SUFFIXES = (".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (streamed by the standard library's `hashlib.file_digest`)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _check_pixels(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise ImageReadError(
            path,
            f"image of {width} x {height} = {height * width:,} pixels exceeds the limit of {max_pixels:,} "
            "(possible decompression bomb)",
        )


def _decode_tiff(path: Path, max_pixels: int) -> np.ndarray:
    """The first image series of a TIFF as (H, W) or (H, W, samples).

    The series' shape comes from the tags, so both the pixel limit and the 2-D check run before decoding.
    Further series (thumbnails, previews) are ignored; a series with depth, time or page axes is refused.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(path, "TIFF holds no image")
            series = tif.series[0]
            dims = dict(zip(series.axes, (int(n) for n in series.shape)))
            if "Y" not in dims or "X" not in dims:
                raise ImageReadError(path, f"not a 2-D image: TIFF axes {series.axes}, shape {series.shape}")
            _check_pixels(path, dims["Y"], dims["X"], max_pixels)
            extra = {axis: n for axis, n in dims.items() if axis not in "YXS" and n > 1}
            if extra:
                raise ImageReadError(
                    path, f"not a 2-D image: TIFF axes {series.axes}, shape {series.shape} (a stack or volume?)"
                )
            array = np.asarray(series.asarray())
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, struct.error, ...)
        raise ImageReadError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    # Drop the length-1 axes, then put colour samples last like every other colour image here.
    kept = [axis for axis in series.axes if axis in "YXS" or dims[axis] > 1]
    array = array.reshape([dims[axis] for axis in kept])
    if "S" in kept:
        array = np.moveaxis(array, kept.index("S"), -1)
    return array


def _open_pil(path: Path, max_pixels: int) -> Image.Image:
    """Open with PIL, check the header size, then decode fully and apply the EXIF orientation."""
    try:
        with warnings.catch_warnings():
            # We enforce our own limit below; PIL's warning for large-but-allowed images is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large to decode safely (possible decompression bomb: {exc})") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a recognised image format (cannot identify the file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot open image ({exc})") from None
    with image:  # closes the file also when the size check refuses it
        width, height = image.size
        _check_pixels(path, height, width, max_pixels)
        try:
            image.load()
            # Returns a new image (a copy when there is no orientation tag), still valid after closing.
            return ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise ImageReadError(path, f"truncated or corrupt image data ({exc})") from None


def _pil_to_array(image: Image.Image, palette_indices: bool = False) -> np.ndarray:
    """Pixel array of a PIL image: gray modes keep their type, colour modes become uint8 RGB(A).

    With `palette_indices`, a paletted image gives its (H, W) palette indices instead of colours.
    """
    mode = image.mode
    if mode in ("P", "PA") and palette_indices:
        return np.asarray(image.getchannel(0) if mode == "PA" else image)
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGB")
    elif mode == "LA":
        image = image.getchannel("L")
    elif mode == "1":
        image = image.convert("L")
    array = np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES:
        array = array.astype(np.uint16)
    elif mode == "I":
        # Some PIL versions open 16-bit grayscale PNG as 32-bit "I"; the data is 16-bit.
        array = np.clip(array, 0, 65535).astype(np.uint16)
    return array


def _drop_singleton_axes(array: np.ndarray) -> np.ndarray:
    """(1, H, W) stacks and (H, W, 1) planes are plain 2-D images."""
    while array.ndim > 2 and array.shape[0] == 1 and array.shape[-1] not in (3, 4):
        array = array[0]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return array


def decode(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, palette_indices: bool = False) -> np.ndarray:
    """Raw pixel array of an image file: (H, W) gray or (H, W, 3|4) colour, in its stored dtype."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _decode_tiff(path, max_pixels)
    else:
        array = _pil_to_array(_open_pil(path, max_pixels), palette_indices)
    array = _drop_singleton_axes(array)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageReadError(path, f"not a 2-D image: shape {array.shape} (a stack or multichannel volume?)")
    if min(array.shape[:2]) < 1:
        raise ImageReadError(path, f"image has no pixels: shape {array.shape}")
    return array


def to_unit_range(array: np.ndarray) -> np.ndarray:
    """Scale by the dtype's range: uint8 / 255, uint16 / 65535, other integers by their maximum; bools as 0/1.
    Floats are taken as intensities already in [0, 1]: NaN, infinite or out-of-range values raise ValueError
    (clipping or zeroing them would silently change the picture). Returns float32. The one conversion every
    path uses: the pipeline's stacks, `nanomorph predict` and the served models' array inputs."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        top = np.iinfo(array.dtype).max
        return (np.clip(array, 0, top).astype(np.float64) / top).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        unit = array.astype(np.float32)
        if not np.isfinite(unit).all():
            raise ValueError("float image contains NaN or infinite values")
        low, high = (float(unit.min()), float(unit.max())) if unit.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ValueError(f"intensities must lie in [0, 1], got [{low:g}, {high:g}]; scale them first")
        return unit
    raise ValueError(f"unsupported pixel type {array.dtype}")


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Grayscale float32 (H, W) image in [0, 1] from PNG (8/16-bit), TIFF, JPEG and other PIL formats.

    Colour (RGB, RGBA, palette) becomes luminance (Rec. 709 weights, alpha ignored); the EXIF orientation
    is applied; intensities are scaled by the storage type's range.
    """
    path = Path(path)
    array = decode(path, max_pixels)
    try:
        unit = to_unit_range(array)
    except ValueError as exc:
        raise ImageReadError(path, str(exc)) from None
    if unit.ndim == 3:
        unit = rgb2gray(unit[..., :3]).astype(np.float32)
    return unit


def read_zenodo_label(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bool mask from a label in the public nanowire set's encoding: wire where green != blue.

    The labels are RGB(A) PNGs (palette images are expanded to RGB); a gray file is refused, since it
    cannot use this encoding.
    """
    path = Path(path)
    array = decode(path, max_pixels)
    if array.ndim != 3:
        raise ImageReadError(path, f"label must be an RGB image (wire where green != blue), got gray shape {array.shape}")
    return array[..., 1] != array[..., 2]


def read_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bool mask from a generic binary mask file.

    * gray (8/16-bit) or paletted: value (palette index) > 0;
    * RGB(A) whose green and blue differ somewhere: the Zenodo encoding, wire where green != blue;
    * RGB(A) with green == blue everywhere (a gray mask saved as colour): any colour channel > 0.
    """
    path = Path(path)
    # Palette index 0 is the background in indexed masks; the palette colours themselves do not matter.
    array = decode(path, max_pixels, palette_indices=True)
    if array.ndim == 3:
        rgb = array[..., :3]
        differs = rgb[..., 1] != rgb[..., 2]
        return differs if differs.any() else rgb.max(axis=2) > 0
    return array > 0


def _resize(array: np.ndarray, size: int, order: int, anti_aliasing: bool) -> np.ndarray:
    if array.shape == (size, size):
        return array
    return resize(array, (size, size), order=order, anti_aliasing=anti_aliasing, preserve_range=True, mode="reflect")


def load_image_stack(paths: Sequence[str | Path], size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Images read with `read_image` and resized (bilinear, anti-aliased) to size x size: float32 (N, size, size)."""
    stack = np.empty((len(paths), size, size), dtype=np.float32)
    for i, path in enumerate(paths):
        image = read_image(path, max_pixels)
        stack[i] = np.clip(_resize(image, size, order=1, anti_aliasing=True), 0.0, 1.0)
    return stack


def load_mask_stack(paths: Sequence[str | Path], size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Masks read with `read_mask` and resized by nearest neighbour to size x size: bool (N, size, size).

    Nearest neighbour keeps the mask binary without a threshold and keeps thin wires as wire pixels that
    the sampling grid hits, rather than averaging them away.
    """
    stack = np.empty((len(paths), size, size), dtype=bool)
    for i, path in enumerate(paths):
        mask = read_mask(path, max_pixels).astype(np.float32)
        stack[i] = _resize(mask, size, order=0, anti_aliasing=False) > 0.5
    return stack
