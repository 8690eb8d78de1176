"""Image statistics that compare a generated TEM micrograph with a real one, whatever their sizes.

Used to calibrate `nanomorph.data.synthetic` on the paper's real panels (`scripts/generator_realism.py`).
Both images are brought to one field of view at one side (`image_statistics` resizes to `side` px, 128 by
default, the pipeline's size), so lengths below are in pixels of that side.

The statistics (`STATISTICS`), each from a small function here:

* `bg_mean`, `bg_std`, `bg_skew` (`background_moments`): moments of the background's intensity after the
  image is stretched between the 1 % and 99 % quantiles of its valid pixels (`normalise`), so exposure, bit
  depth and export contrast drop out;
* `grain_length` (`correlation_length`): the distance (px) at which the radially averaged autocorrelation of
  the background's high-pass residual (image minus a Gaussian blur of sigma `HIGH_PASS` px: the grain and
  shot noise, without illumination) falls to 1/e; white noise gives ~0.6, Gaussian-filtered white noise of
  sigma s gives 2 s;
* `spectral_slope` (`spectral_slope`): log-log slope of the radially averaged power spectrum of that residual
  between 0.08 and 0.4 cycles/px: 0 for white noise, strongly negative for smooth (blurred) grain;
* `grain_std`: standard deviation of that residual over the background (normalised units);
* `illumination` (`background_trend`): standard deviation of the smooth background trend (normalised
  convolution of the background with a Gaussian of sigma side / 8): uneven illumination and film thickness;
* `cnr` (`contrast_to_noise`): (background trend - intensity) averaged over the wire pixels, divided by the
  background's residual standard deviation: how far the wires stand out of the grain;
* `coverage`: the fraction of valid pixels under the wire mask;
* `width_median`, `width_cv` (`wire_widths`): median and coefficient of variation of the local wire width,
  the distance transform sampled on the skeleton (on a 2x upsampled grid, so even widths come out right);
* `tortuosity` (`branch_tortuosity`): median arc length (`path_length`, a polyline through every 4th pixel)
  / chord of the skeleton's branches (split at junctions) at least `MIN_BRANCH` px long; 1 for straight wires.

A real panel has no mask: `rough_wire_mask` stands in for it (smooth, flatten, keep the pixels darker than
the background by more than `ROUGH_K` robust noise deviations, drop specks). It is an approximation: it misses
the faintest wire pixels, merges wires that touch, and its edges follow the grain. The same rule is applied to
generated images (`image_statistics(..., mask=None)`), so real and generated values of the mask-based
statistics are comparable when both use the rough mask; with a generated image's exact mask they describe the
generator's ground truth.

`valid` marks the pixels that belong to the specimen: `overlay_mask` finds the pasted labels and the
microscope's scale bar (pure white boxes and glyphs) so they can be left out, and `crop_flat_borders` trims
frame rows and columns of constant intensity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats
from skimage.measure import label, regionprops
from skimage.morphology import skeletonize
from skimage.transform import resize

STATISTICS = (
    "bg_mean", "bg_std", "bg_skew", "grain_std", "grain_length", "spectral_slope", "illumination",
    "cnr", "coverage", "width_median", "width_cv", "tortuosity",
)
MASK_STATISTICS = ("cnr", "coverage", "width_median", "width_cv", "tortuosity")
HIGH_PASS = 3.0   # px; sigma of the blur subtracted to isolate the grain
ROUGH_SMOOTH = 1.0  # px; sigma of the smoothing before the rough mask's threshold
ROUGH_K = 2.0     # robust noise deviations below the background for a rough-mask pixel
ROUGH_MIN_SIZE = 12  # px; smaller rough-mask components are grain, not wires
MIN_BRANCH = 10   # px; shorter skeleton branches (spurs, pieces between junctions) are ignored


# ----------------------------------------------------------------------------------------------------------
# Preparing an image
# ----------------------------------------------------------------------------------------------------------


def crop_flat_borders(image: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """`image` without the rows and columns of (nearly) constant intensity at its edges: frame lines."""
    image = np.asarray(image)
    rows = np.nonzero(image.std(axis=1) > tol)[0]
    cols = np.nonzero(image.std(axis=0) > tol)[0]
    if len(rows) == 0 or len(cols) == 0:
        return image
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def overlay_mask(image: np.ndarray, min_pixels: int = 15, margin: int = 2) -> np.ndarray:
    """Pixels under overlays burnt into a micrograph: scale bars and pasted labels, drawn in pure white.

    The saturated pixels are opened with a 2 x 2 square (overlay strokes are solid, saturated noise pixels
    are scattered), the components of at least `min_pixels` px are kept and the bounding box of all of them,
    widened by `margin` px, is returned (they sit together in a corner). All False when there is no overlay.
    """
    image = np.asarray(image, dtype=np.float64)
    out = np.zeros(image.shape, dtype=bool)
    top = image.max()
    if top <= image.min():
        return out
    solid = ndimage.binary_opening(image >= top, structure=np.ones((2, 2), dtype=bool))
    regions = [r for r in regionprops(label(solid, connectivity=2)) if r.area >= min_pixels]
    if not regions:
        return out
    r0 = min(r.bbox[0] for r in regions)
    c0 = min(r.bbox[1] for r in regions)
    r1 = max(r.bbox[2] for r in regions)
    c1 = max(r.bbox[3] for r in regions)
    out[max(0, r0 - margin) : r1 + margin, max(0, c0 - margin) : c1 + margin] = True
    return out


def normalise(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """`image` stretched so the 1 % and 99 % quantiles of its valid pixels map to 0 and 1 (not clipped)."""
    image = np.asarray(image, dtype=np.float64)
    values = image[valid] if valid is not None else image
    lo, hi = np.quantile(values, [0.01, 0.99])
    return (image - lo) / max(hi - lo, 1e-12)


def background_trend(image: np.ndarray, background: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth background level everywhere: a Gaussian blur of the background pixels only, divided by the
    blur of the background indicator (normalised convolution), so dark objects do not pull it down."""
    weight = ndimage.gaussian_filter(background.astype(np.float64), sigma, mode="reflect")
    level = ndimage.gaussian_filter(np.where(background, image, 0.0), sigma, mode="reflect")
    fallback = image[background].mean() if background.any() else image.mean()
    return np.where(weight > 1e-3, level / np.maximum(weight, 1e-12), fallback)


def high_pass(image: np.ndarray, background: np.ndarray, sigma: float = HIGH_PASS) -> np.ndarray:
    """The grain: image minus its local background level (normalised convolution over `background`)."""
    return image - background_trend(image, background, sigma)


def smooth_trend(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Least-squares quadratic surface in (row, col) fitted to the background pixels: the illumination and
    film-thickness trend, too stiff to follow a wide dark fibre."""
    rows, cols = np.indices(image.shape, dtype=np.float64)
    rows, cols = rows / image.shape[0] - 0.5, cols / image.shape[1] - 0.5
    basis = np.stack([np.ones_like(rows), rows, cols, rows**2, rows * cols, cols**2], axis=-1)
    coef, *_ = np.linalg.lstsq(basis[background], image[background], rcond=None)
    return basis @ coef


def drop_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """`mask` without its 8-connected components of fewer than `min_size` pixels."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def background_level(values: np.ndarray) -> tuple[float, float]:
    """(mode, standard deviation) of the background in a sample of intensities with darker objects mixed in.

    The mode is the peak of a smoothed histogram; the standard deviation comes from the bright side of the
    peak only (1.4826 times the median distance above it), which the dark objects do not reach.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = np.quantile(values, [0.01, 0.99])
    counts, edges = np.histogram(values, bins=100, range=(lo, hi))
    peak = int(np.argmax(ndimage.gaussian_filter1d(counts.astype(np.float64), 2.0)))
    mode = 0.5 * (edges[peak] + edges[peak + 1])
    above = values[values > mode] - mode
    return float(mode), float(1.4826 * np.median(above)) if len(above) else 0.0


def rough_wire_mask(image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """An approximate wire mask for an image without one (a real panel): dark, connected, not grain.

    The image is smoothed (sigma ROUGH_SMOOTH px), flattened by its background trend (`background_trend`,
    sigma side / 8, over the background pixels only) and thresholded at ROUGH_K standard deviations below
    the background's level (`background_level`: histogram mode, bright-side spread); components under
    ROUGH_MIN_SIZE px are dropped. The background starts as the brighter half of the pixels and is
    re-estimated without the dark pixels found (three passes), so a wide dark fibre does not drag the trend
    down. It misses the faintest wire pixels, fattens wires to the smoothing's scale and also takes large dark
    patches of film.
    """
    image = np.asarray(image, dtype=np.float64)
    valid = np.ones(image.shape, dtype=bool) if valid is None else valid
    smooth = ndimage.gaussian_filter(image, ROUGH_SMOOTH)
    background = valid & (smooth >= np.median(smooth[valid]))
    mask = np.zeros(image.shape, dtype=bool)
    for _ in range(3):
        flat = smooth - background_trend(smooth, background, image.shape[0] / 8)
        level, spread = background_level(flat[valid])
        mask = valid & (flat < level - ROUGH_K * spread)
        mask = drop_small_objects(mask, ROUGH_MIN_SIZE)
        background = valid & ~ndimage.binary_dilation(mask)
    return mask


# ----------------------------------------------------------------------------------------------------------
# Background and grain
# ----------------------------------------------------------------------------------------------------------


def background_moments(image: np.ndarray, background: np.ndarray) -> tuple[float, float, float]:
    """(mean, standard deviation, skewness) of the intensities of the background pixels."""
    values = np.asarray(image, dtype=np.float64)[background]
    return float(values.mean()), float(values.std()), float(stats.skew(values))


def masked_autocorrelation(field: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Autocorrelation (lag 0 = 1) of a zero-mean field over its valid pixels, every lag, fftshifted.

    Each lag's sum is divided by the number of valid pixel pairs at that lag (zero-padded FFTs), so holes
    (wires, overlays) and image edges do not bias it.
    """
    field = np.asarray(field, dtype=np.float64)
    valid = np.ones(field.shape, dtype=bool) if valid is None else valid
    values = np.where(valid, field - field[valid].mean(), 0.0)
    shape = [2 * n for n in field.shape]
    f = np.fft.rfft2(values, shape)
    w = np.fft.rfft2(valid.astype(np.float64), shape)
    products = np.fft.irfft2(f * np.conj(f), shape)
    pairs = np.fft.irfft2(w * np.conj(w), shape)
    acf = products / np.maximum(pairs, 1.0)
    acf = np.where(pairs > 0.5 * valid.sum() / 8, acf, np.nan)  # lags with too few pairs are unreliable
    return np.fft.fftshift(acf / acf[0, 0])


def radial_profile(values: np.ndarray, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(radius, mean) of `values` in 1 px wide rings around `centre` (NaNs ignored)."""
    rows, cols = np.indices(values.shape)
    radius = np.rint(np.hypot(rows - centre[0], cols - centre[1])).astype(int)
    ok = np.isfinite(values)
    total = np.bincount(radius[ok], values[ok])
    count = np.bincount(radius[ok])
    keep = count > 0
    return np.nonzero(keep)[0].astype(float), total[keep] / count[keep]


def correlation_length(field: np.ndarray, valid: np.ndarray | None = None) -> float:
    """The lag (px) where the radially averaged autocorrelation of `field` first drops to 1/e (linear
    interpolation between integer lags)."""
    acf = masked_autocorrelation(field, valid)
    radius, profile = radial_profile(acf, (acf.shape[0] // 2, acf.shape[1] // 2))
    below = np.nonzero(profile <= np.exp(-1.0))[0]
    if len(profile) == 0:
        return float("nan")
    if len(below) == 0:
        return float(radius[-1])
    k = below[0]
    if k == 0:
        return 0.0
    r0, r1, a0, a1 = radius[k - 1], radius[k], profile[k - 1], profile[k]
    return float(r0 + (a0 - np.exp(-1.0)) / max(a0 - a1, 1e-12) * (r1 - r0))


def radial_power_spectrum(field: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in cycles/px, power) of `field`, radially averaged; invalid pixels are set to the mean and
    a Hann window tapers the edges."""
    field = np.asarray(field, dtype=np.float64)
    valid = np.ones(field.shape, dtype=bool) if valid is None else valid
    values = np.where(valid, field - field[valid].mean(), 0.0)
    window = np.outer(np.hanning(field.shape[0]), np.hanning(field.shape[1]))
    power = np.fft.fftshift(np.abs(np.fft.fft2(values * window)) ** 2)
    radius, profile = radial_profile(power, (field.shape[0] // 2, field.shape[1] // 2))
    return radius / min(field.shape), profile


def spectral_slope(field: np.ndarray, valid: np.ndarray | None = None,
                   band: tuple[float, float] = (0.08, 0.4)) -> float:
    """Least-squares slope of log(power) on log(frequency) of `radial_power_spectrum` within `band`."""
    freq, power = radial_power_spectrum(field, valid)
    keep = (freq >= band[0]) & (freq <= band[1]) & (power > 0)
    return float(np.polyfit(np.log(freq[keep]), np.log(power[keep]), 1)[0])


# ----------------------------------------------------------------------------------------------------------
# Wires
# ----------------------------------------------------------------------------------------------------------


def contrast_to_noise(image: np.ndarray, wires: np.ndarray, background: np.ndarray, noise: float) -> float:
    """Mean of (background trend - intensity) over the wire pixels, divided by `noise` (the background's
    grain standard deviation). The trend (sigma side / 8, background pixels only) removes illumination."""
    if not wires.any():
        return float("nan")
    trend = background_trend(image, background, image.shape[0] / 8)
    return float((trend - image)[wires].mean() / max(noise, 1e-12))


def wire_widths(mask: np.ndarray) -> np.ndarray:
    """Local widths (px) of the wires, one per skeleton pixel of the mask upsampled 2x (nearest neighbour).

    On that grid a band n px across is 2n px across, and its skeleton lies n px deep (Euclidean distance to
    the background), so the depth there is the width in the original pixels, for even and odd n alike.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.empty(0)
    fine = np.kron(mask, np.ones((2, 2), dtype=bool))
    depth = ndimage.distance_transform_edt(np.pad(fine, 1))[1:-1, 1:-1]
    return depth[skeletonize(fine)]


_NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])


def skeleton_branches(mask: np.ndarray) -> list[np.ndarray]:
    """The skeleton of `mask` cut at its junctions (pixels with more than two skeleton neighbours): each
    branch as its pixel coordinates (N, 2), ordered from one end to the other."""
    skeleton = skeletonize(np.asarray(mask, dtype=bool))
    degree = ndimage.convolve(skeleton.astype(int), _NEIGHBOURS, mode="constant") * skeleton
    pieces = skeleton & (degree <= 2)
    labels, n = ndimage.label(pieces, structure=np.ones((3, 3)))
    branches = []
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        rows, cols = np.nonzero(labels[where] == index)
        coords = np.stack([rows + where[0].start, cols + where[1].start], axis=1)
        branches.append(_order_path(coords))
    return branches


def _order_path(coords: np.ndarray) -> np.ndarray:
    """Pixels of a simple 8-connected path (or loop) in walking order, from an end pixel."""
    if len(coords) <= 2:
        return coords
    lookup = {tuple(p): i for i, p in enumerate(coords)}
    neighbours = []
    for r, c in coords:
        neighbours.append([lookup[(r + dr, c + dc)] for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                           if (dr or dc) and (r + dr, c + dc) in lookup])
    ends = [i for i, nb in enumerate(neighbours) if len(nb) <= 1]
    order, seen = [ends[0] if ends else 0], set()
    seen.add(order[0])
    while True:
        step = [j for j in neighbours[order[-1]] if j not in seen]
        if not step:
            break
        # Prefer the 4-connected neighbour: a diagonal shortcut would skip a pixel of the path.
        here = coords[order[-1]]
        step.sort(key=lambda j: np.abs(coords[j] - here).sum())
        order.append(step[0])
        seen.add(step[0])
    return coords[order]


def path_length(path: np.ndarray, stride: int = 4) -> float:
    """Length (px) of a pixel path, measured along the polyline through every `stride`-th pixel (and the
    last): summing the pixel steps themselves would make a straight digital line up to 8 % longer than it is."""
    if len(path) < 2:
        return 0.0
    index = np.unique(np.r_[np.arange(0, len(path), stride), len(path) - 1])
    return float(np.hypot(*np.diff(path[index].astype(np.float64), axis=0).T).sum())


def branch_tortuosity(mask: np.ndarray, min_length: float = MIN_BRANCH) -> np.ndarray:
    """Arc length / chord of every skeleton branch at least `min_length` px long (1: straight)."""
    out = []
    for branch in skeleton_branches(mask):
        arc = path_length(branch)
        chord = float(np.hypot(*(branch[-1] - branch[0])))
        if arc >= min_length and chord > 0:
            out.append(arc / chord)
    return np.asarray(out)


# ----------------------------------------------------------------------------------------------------------
# All together
# ----------------------------------------------------------------------------------------------------------


def _resize_mask(mask: np.ndarray, side: int) -> np.ndarray:
    return resize(mask.astype(np.float64), (side, side), order=1, anti_aliasing=False) > 0.5


def image_statistics(
    image: np.ndarray, mask: np.ndarray | None = None, valid: np.ndarray | None = None, side: int = 128
) -> dict[str, float]:
    """The STATISTICS of a 2-D intensity image (wires darker than the film), measured at `side` x `side`.

    `mask`: the wire mask (the exact one of a generated image); None: `rough_wire_mask`. `valid`: the pixels
    to measure (False under overlays such as a scale bar); None: `~overlay_mask(image)`.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if valid is None:
        valid = ~overlay_mask(image)
    if image.shape != (side, side):
        image = resize(image, (side, side), order=1, anti_aliasing=True)
        valid = _resize_mask(valid, side)
        mask = None if mask is None else _resize_mask(mask, side)
    # Pixels next to an overlay take its brightness in the resize and the blur: keep away from it.
    valid = ~ndimage.binary_dilation(~valid, iterations=2) if (~valid).any() else valid
    image = normalise(image, valid)
    wires = (rough_wire_mask(image, valid) if mask is None else mask.astype(bool)) & valid
    background = valid & ~ndimage.binary_dilation(wires, iterations=1)
    bg_mean, bg_std, bg_skew = background_moments(image, background)
    grain = high_pass(image, background)
    grain_std = float(grain[background].std())
    widths = wire_widths(wires)
    tortuosity = branch_tortuosity(wires)
    return {
        "bg_mean": bg_mean,
        "bg_std": bg_std,
        "bg_skew": bg_skew,
        "grain_std": grain_std,
        "grain_length": correlation_length(grain, background),
        "spectral_slope": spectral_slope(grain, background),
        "illumination": float(background_trend(image, background, side / 8)[valid].std()),
        "cnr": contrast_to_noise(image, wires, background, grain_std),
        "coverage": float(wires[valid].mean()),
        "width_median": float(np.median(widths)) if len(widths) else float("nan"),
        "width_cv": float(widths.std() / widths.mean()) if len(widths) else float("nan"),
        "tortuosity": float(np.median(tortuosity)) if len(tortuosity) else float("nan"),
    }
