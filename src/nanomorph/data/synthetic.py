"""Procedural stand-ins for the paper's data, so the pipeline runs without a network connection.

* Nanowire TEM images in the four morphologies of Lu et al. (arXiv 2203.13875), each with its exact wire
  mask. The percolation label is enforced: every `network` image percolates by the paper's rule
  (`nanomorph.analysis.percolation.percolates`), no other image does.
* Generic EM textures (membranes, vesicles, granules, organelles) standing in for CEM500K in pretraining.

All geometry is drawn in units of the image side, with widths scaled from a 128 px reference, so an image
at another size shows the same field of view at another resolution. Every image is a pure function of its
numpy Generator; the dataset writers seed one Generator per image from (seed, class, index).

Calibration on real TEM
-----------------------
The nanowire images are calibrated on the paper's four real panels (`/work/shared/data/lu2022-figure`, one
per class, ~300 px, CC0) by the statistics of `nanomorph.data.realism`, measured on the panels resized to
128 px (the same field of view as a generated image; overlays left out) and on generated 128 px images
(`scripts/generator_realism.py`: 25 images per class, data seed 7, written to
`benchmarks/results/generator_realism.json` and `.png`). What the panels show, and what the generator does for it:

* strong, fine amorphous-carbon grain (about white at 128 px) that the thin wires barely stand out of:
  `amorphous_film` grain of GRAIN_SIGMA px and GRAIN_STRENGTH, thin-wire contrast CONTRAST_TO_GRAIN times
  the grain's strength;
* thin wires that wind and loop, with width and darkness varying along them: `curly_curve`,
  `varying_width`, a cylinder's chord as the absorption profile (`projected_thickness`);
* in `bundle`, one thick dark fibre of fused wires crossing the field on a bright, smoother film: many wide
  overlapping strands (`_bundle_fibre`), whose overlaps give the fibre its streaky texture and its dark
  core; the mask covers the whole fibre. The real bundle panel's film grain is far weaker and smoother than
  the thin-wire panels' (another magnification and focus), hence its own BUNDLE_* imaging ranges;
* uneven illumination and film thickness (`beam_profile`, the film's slow variation);
* the microscope's scale bar in a bottom corner, a white box with a black bar, end ticks and small text
  (`draw_scale_bar`); it hides what lies beneath, so the mask leaves it out and the percolation label is
  checked on what the image shows.

Real panel / generated median [IQR] over 25 images per class (data seed 7, 128 px); both measured with
`realism.image_statistics` and its rough wire mask (`rough_wire_mask`), intensities stretched 1-99 %:

  statistic       bundle                       dispersed
  ------------------------------------------------------------------------
  bg_mean         0.88 / 0.92 [0.88,0.93]      0.56 / 0.61 [0.58,0.63]
  bg_std          0.04 / 0.04 [0.04,0.06]      0.18 / 0.17 [0.16,0.18]
  bg_skew         0.81 / 0.10 [0.03,0.27]      0.02 / 0.08 [0.05,0.10]
  grain_std       0.01 / 0.02 [0.01,0.02]      0.13 / 0.15 [0.13,0.16]
  grain_length    1.35 / 1.27 [0.96,1.37]      0.78 / 0.73 [0.69,0.77]
  spectral_slope  -2.07 / -2.38 [-2.78,-1.97]  -0.70 / -0.48 [-0.70,-0.27]
  illumination    0.03 / 0.04 [0.03,0.05]      0.09 / 0.07 [0.06,0.07]
  cnr             46.6 / 35.5 [31.7,38.8]      2.74 / 2.23 [2.01,2.44]
  coverage        0.45 / 0.49 [0.41,0.55]      0.06 / 0.12 [0.08,0.13]
  width_median    31.7 / 13.4 [10.6,18.0]      2.00 / 2.24 [2.00,2.83]
  width_cv        0.57 / 0.87 [0.81,0.94]      0.44 / 0.37 [0.36,0.40]
  tortuosity      1.07 / 1.03 [1.02,1.05]      1.02 / 1.02 [1.02,1.02]

  statistic       network                      singular
  -----------------------------------------------------------------------
  bg_mean         0.59 / 0.65 [0.62,0.67]      0.63 / 0.57 [0.53,0.59]
  bg_std          0.21 / 0.15 [0.14,0.17]      0.17 / 0.18 [0.17,0.20]
  bg_skew         -0.29 / 0.00 [-0.04,0.05]    -0.09 / 0.08 [0.06,0.10]
  grain_std       0.19 / 0.14 [0.13,0.15]      0.16 / 0.17 [0.16,0.18]
  grain_length    0.79 / 0.70 [0.68,0.75]      0.64 / 0.74 [0.68,0.80]
  spectral_slope  -0.54 / -0.28 [-0.59,-0.05]  0.20 / -0.60 [-0.86,-0.21]
  illumination    0.05 / 0.04 [0.03,0.06]      0.04 / 0.05 [0.04,0.07]
  cnr             1.79 / 2.24 [2.00,2.42]      1.94 / 2.30 [1.89,2.48]
  coverage        0.10 / 0.18 [0.14,0.21]      0.15 / 0.05 [0.03,0.07]
  width_median    2.00 / 2.24 [2.00,2.83]      4.00 / 3.61 [3.00,4.00]
  width_cv        0.40 / 0.44 [0.43,0.46]      0.76 / 0.42 [0.40,0.47]
  tortuosity      1.08 / 1.02 [1.02,1.03]      1.14 / 1.08 [1.04,1.13]

With the exact masks instead (generated only): cnr 40.9 / 2.86 / 3.05 / 2.55 (bundle / dispersed / network /
singular), width_median 37.6 / 1.41 / 1.00 / 4.00 px, tortuosity 1.04 / 1.02 / 1.02 / 1.20.

Not matched: the real network panel is denser, with fainter wires, than most generated networks (the
network's wire count is the class design of `_network_layout`, which overlaps `dispersed` in density on
purpose), so its rough coverage and bg_std differ; the real bundle film's bright skew (bg_skew 0.81) and the
real singular panel's slightly rising spectrum (+0.20, probably sharpening at export) are outside the
generated range; the rough mask splits the generated fibres at their lighter streaks, so their rough
width_median is below the real fibre's (exact: 37.6 px); by the rough mask the real network and singular wires
are a little more tortuous (1.08, 1.14) than the generated ones' medians (1.02, 1.08), and the real singular
panel's rough coverage (0.15) includes a large dark corner of film.

A global Otsu threshold (wires darker, 8-connected specks under 4 px removed) scored a median dice of 0.76 on
the previous generator and 0.36 on this one (100 images, data seed 7, 128 px resized to 64 px as the pipeline
does; 0.84 and 0.42 at 128 px). That is reported only: it was never a target.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import draw, segmentation
from skimage.morphology import disk
from tqdm import tqdm

from nanomorph.analysis.percolation import percolates

CLASSES = ("bundle", "dispersed", "network", "singular")

REFERENCE_SIZE = 128  # px; wire widths and blur radii are specified at this size and scaled with it
MIN_WIRE_WIDTH = 1.2  # px; narrower bands rasterise into broken dotted lines
MAX_LAYOUT_ATTEMPTS = 60

# Calibrated on the real panels (module docstring); lengths in px at the 128 px reference.
CURL = 0.7                    # rms turn (radians) of a thin wire's heading over CURL_LENGTH
CURL_LENGTH = 15.0            # px; correlation length of a thin wire's curvature along it
WIDTH_SPREAD = 0.25           # relative std of a wire's width along its length
CONTRAST_TO_GRAIN = (2.5, 4.5)  # a thin wire's core contrast (1 - transmission) / the grain's relative std
GRAIN_SIGMA = (0.4, 0.7)      # px; correlation of the film's phase-contrast grain
GRAIN_STRENGTH = (0.06, 0.11)  # relative std of that grain
BLUR_SIGMA = (0.25, 0.5)      # px; defocus blur
DOSE = (300.0, 1500.0)        # counts per pixel at intensity 1 (shot noise)
STRAND_CONTRAST = (0.4, 0.55)  # 1 - transmission of one strand of a bundle's fibre at its core
BUNDLE_GRAIN_SIGMA = (0.8, 1.3)
BUNDLE_GRAIN_STRENGTH = (0.01, 0.025)
BUNDLE_BLUR_SIGMA = (0.5, 1.0)
BUNDLE_DOSE = (8000.0, 30000.0)

# Distinct first words of the SeedSequence entropy keep the two generators' random streams apart.
_NANOWIRE_STREAM = 0
_GENERIC_STREAM = 1

# ----------------------------------------------------------------------------------------------------------
# Geometry: smooth curves and their rasterisation
# ----------------------------------------------------------------------------------------------------------


def smooth_curve(
    rng: np.random.Generator, centre: Sequence[float], angle: float, length: float, bend: float, step: float = 1.5
) -> np.ndarray:
    """Centreline samples (N, 2) in (row, col), `step` px apart, of a gently curved wire centred on `centre`.

    The heading drifts linearly plus one slow wobble, so the curvature is smooth and the total turn stays
    around `bend` radians: stiff filaments that bend over their whole length, not in kinks.
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    s = np.linspace(0.0, 1.0, n)
    wobble = np.sin(np.pi * rng.uniform(0.5, 2.0) * s + rng.uniform(0, 2 * np.pi))
    heading = angle + bend * (rng.normal(0.0, 0.7) * (s - 0.5) + rng.normal(0.0, 0.3) * wobble)
    ds = length / (n - 1)
    steps = np.stack([np.sin(heading), np.cos(heading)], axis=1) * ds
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])
    return points - points[n // 2] + np.asarray(centre, dtype=float)


def smooth_series(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """n samples of Gaussian-filtered white noise (correlation `sigma` samples), zero mean, unit std."""
    pad = int(np.ceil(3 * sigma)) + 1
    field = ndimage.gaussian_filter1d(rng.standard_normal(n + 2 * pad), sigma=max(sigma, 1e-3))[pad : pad + n]
    return (field - field.mean()) / (field.std() + 1e-12) if n > 1 else np.zeros(n)


def curly_curve(
    rng: np.random.Generator,
    centre: Sequence[float],
    angle: float,
    length: float,
    curl: float,
    curl_length: float,
    step: float = 1.0,
) -> np.ndarray:
    """Centreline samples (N, 2), `step` px apart, of a flexible wire that winds as real thin nanowires do.

    The curvature along the wire is smooth random noise of correlation length `curl_length` px, scaled so
    the heading turns by about `curl` radians (rms) over one correlation length, plus a constant bend drawn
    per wire (arcs and loops); the curve is centred on `centre` at its middle sample.
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    ds = length / (n - 1)
    sigma = max(curl_length / ds, 1.0)
    curvature = smooth_series(rng, n, sigma) * curl / curl_length + rng.normal(0.0, 0.3) * curl / curl_length
    heading = angle + np.cumsum(curvature * ds)
    heading -= heading[n // 2] - angle
    steps = np.stack([np.sin(heading), np.cos(heading)], axis=1) * ds
    points = np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])
    return points - points[n // 2] + np.asarray(centre, dtype=float)


def curve_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals (N, 2) of a sampled curve."""
    tangent = np.gradient(points, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    return np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)


def parallel_curve(points: np.ndarray, offset: float | np.ndarray) -> np.ndarray:
    """The curve shifted sideways by `offset` px (scalar or one per sample): a neighbour in a bundle."""
    return points + curve_normals(points) * np.reshape(offset, (-1, 1))


def rasterise_wire(points: np.ndarray, width: float | np.ndarray, shape: tuple[int, int], piece: int = 8) -> np.ndarray:
    """Pixels whose centres fall inside the band of `width` px (a scalar, or one width per centreline
    sample) around the centreline (clipped to `shape`).

    The band is filled as a chain of short quadrilateral strips of `piece` segments, overlapping by one
    segment so no seam is left: skimage's polygon fill tests every pixel of the polygon's bounding box, and
    the boxes of short pieces of a long diagonal wire are far smaller than the box of the whole wire.
    """
    half = curve_normals(points) * (np.reshape(width, (-1, 1)) / 2.0)
    left, right = points + half, points - half
    mask = np.zeros(shape, dtype=bool)
    for start in range(0, max(1, len(points) - 1), piece):
        stop = min(start + piece + 2, len(points))
        outline = np.concatenate([left[start:stop], right[start:stop][::-1]])
        rows, cols = draw.polygon(outline[:, 0], outline[:, 1], shape=shape)
        mask[rows, cols] = True
    return mask


def varying_width(rng: np.random.Generator, n: int, width: float, spread: float = WIDTH_SPREAD,
                  sigma: float = 3.0) -> np.ndarray:
    """Widths at `n` centreline samples: `width` times a slow random modulation (correlation `sigma`
    samples) of relative std `spread` (real wires thicken and thin along their length), >= MIN_WIRE_WIDTH."""
    return np.maximum(MIN_WIRE_WIDTH, width * (1.0 + spread * smooth_series(rng, n, sigma)))


def _scale(size: int) -> float:
    return size / REFERENCE_SIZE


def _wire_width(rng: np.random.Generator, base_width: float) -> float:
    return max(MIN_WIRE_WIDTH, base_width * rng.uniform(0.85, 1.15))


def _base_width(rng: np.random.Generator, size: int) -> float:
    # ~1.3-2.6 px at 128 px; individual wires vary +-15 % around it, and along their length.
    return rng.uniform(1.3, 2.6) * _scale(size)


def _place_apart(
    rng: np.random.Generator,
    make_group: Callable[[], list[np.ndarray]],
    count: int,
    shape: tuple[int, int],
    margin: float,
    tries: int = 25,
) -> list[np.ndarray]:
    """Draw up to `count` groups of wires that keep `margin` px away from the groups already placed.

    A group that cannot be placed within `tries` draws is skipped, so crowded layouts thin out rather than
    loop forever.
    """
    keep_out = np.zeros(shape, dtype=bool)
    footprint = disk(max(1, int(round(margin))))
    wires: list[np.ndarray] = []
    for _ in range(count):
        for _ in range(tries):
            group = [m for m in make_group() if m.any()]
            if not group:
                continue
            union = np.logical_or.reduce(group)
            if (union & keep_out).any():
                continue
            wires.extend(group)
            keep_out |= ndimage.binary_dilation(union, structure=footprint)
            break
    return wires


# ----------------------------------------------------------------------------------------------------------
# The four morphologies (each returns one boolean mask per wire)
# ----------------------------------------------------------------------------------------------------------


def _single_wire(
    rng: np.random.Generator, size: int, width: float, length_range: tuple[float, float],
    centre_range: tuple[float, float], curl: float = CURL,
) -> np.ndarray:
    """One thin curly wire of width varying along it, centred in `centre_range` (fractions of the side)."""
    scale = _scale(size)
    centre = rng.uniform(*centre_range, size=2) * size
    points = curly_curve(rng, centre, rng.uniform(0, 2 * np.pi), rng.uniform(*length_range) * size,
                         curl * rng.uniform(0.5, 1.2), CURL_LENGTH * scale, step=max(1.0, scale))
    return rasterise_wire(points, varying_width(rng, len(points), width), (size, size))


def _singular_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """One to three long isolated wires."""
    base = _base_width(rng, size) * 2.4  # the real singular panel is at a higher magnification

    def make() -> list[np.ndarray]:
        return [_single_wire(rng, size, _wire_width(rng, base), (0.5, 1.1), (0.2, 0.8))]

    return _place_apart(rng, make, int(rng.integers(1, 4)), (size, size), margin=6 * _scale(size))


def _dispersed_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """Six to forty short separate wires scattered over the film; they must not form a spanning cluster.

    Crowded dispersed films are as dense as sparse networks (as in the real TEM set): density alone does not
    separate the two classes, percolation does, and one-shot anchors can sit on the wrong side of the
    density boundary (the paper's anchor finding needs such draws to be testable).
    """
    base = _base_width(rng, size)

    def make() -> list[np.ndarray]:
        return [_single_wire(rng, size, _wire_width(rng, base), (0.12, 0.35), (0.05, 0.95))]

    return _place_apart(rng, make, int(rng.integers(6, 40)), (size, size), margin=2.5 * _scale(size))


def _network_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """Six to thirty-five long winding wires crossing each other and the image border; denser on each retry
    until it percolates, so sparse networks are only as dense as they must be to span the image."""
    base = _base_width(rng, size) * 0.7  # the real network panel is at a lower magnification
    count = int(rng.integers(6, 35)) + 3 * attempt
    return [_single_wire(rng, size, _wire_width(rng, base), (0.5, 1.1), (-0.05, 1.05)) for _ in range(count)]


def _bundle_fibre(rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """One thick fibre of many fused wires crossing the field of view, as one mask per strand.

    The fibre's axis is stiff (gently curved) and runs from one border to the opposite one, mostly along
    the image's rows or columns; it is 30-55 % of the side wide, broadening and narrowing along its
    length. It is filled with wide strands that overlap (pitch under a strand's width, so the fibre has no
    gaps) and wander a little across it: where more strands overlap, the fibre is darker, which gives the
    streaky texture along it and the darker core of the real bundle.
    """
    scale = _scale(size)
    width = rng.uniform(0.3, 0.55) * size
    across = rng.uniform(0.25, 0.75) * size
    along = rng.uniform(0.3, 0.7) * size
    vertical = rng.random() < 0.5
    angle = (np.pi / 2 if vertical else 0.0) + rng.uniform(-0.45, 0.45) + (np.pi if rng.random() < 0.5 else 0.0)
    centre = (along, across) if vertical else (across, along)
    step = max(1.5, 2.0 * scale)
    axis = smooth_curve(rng, centre, angle, 1.8 * size, rng.uniform(0.0, 0.6), step=step)
    n = len(axis)
    profile = width * (1.0 + 0.15 * smooth_series(rng, n, 0.25 * size / step))   # the fibre's outline
    strand_width = rng.uniform(0.2, 0.35) * width
    n_strands = int(np.ceil(2.5 * width / strand_width))
    strands = []
    for j in range(n_strands):
        lane = (j + 0.5) / n_strands - 0.5                     # -0.5 .. 0.5 of the local width
        lane_at = lane + 0.06 * smooth_series(rng, n, 0.15 * size / step)
        offset = lane_at * (profile - strand_width)
        w = varying_width(rng, n, strand_width * rng.uniform(0.8, 1.2), spread=0.2, sigma=0.1 * size / step)
        strands.append(rasterise_wire(parallel_curve(axis, offset), w, (size, size), piece=4))
    return strands


def _bundle_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """One thick fused fibre, sometimes with a stray thin wire or two beside it."""
    base = _base_width(rng, size)
    fibre = _bundle_fibre(rng, size)
    keep_out = ndimage.binary_dilation(np.logical_or.reduce(fibre), iterations=max(1, int(round(3 * _scale(size)))))
    strays = []
    for _ in range(int(rng.integers(0, 3))):
        wire = _single_wire(rng, size, _wire_width(rng, base), (0.1, 0.3), (0.1, 0.9))
        if not (ndimage.binary_dilation(wire, iterations=3) & keep_out).any():
            strays.append(wire)
            keep_out |= wire
    return fibre + strays


_LAYOUTS = {
    "bundle": _bundle_layout,
    "dispersed": _dispersed_layout,
    "network": _network_layout,
    "singular": _singular_layout,
}


def wire_layout(morphology: str, size: int, rng: np.random.Generator,
                hidden: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-wire masks for one image, redrawn until the percolation label fits the class.

    Networks must percolate and every other class must not: the paper separates `network` from the rest
    exactly by this property, so a stray spanning `dispersed` image would be a mislabelled example.
    `hidden` (bool, the image's shape): pixels covered later (the scale bar); wires are cut there first, so
    the label is checked on what the image shows. A bundle's fibre comes as one mask per strand.
    """
    if morphology not in _LAYOUTS:
        raise ValueError(f"unknown morphology '{morphology}' (choose from {', '.join(CLASSES)})")
    want_percolation = morphology == "network"
    for attempt in range(MAX_LAYOUT_ATTEMPTS):
        wires = _LAYOUTS[morphology](rng, size, attempt)
        if hidden is not None:
            wires = [w & ~hidden for w in wires]
        wires = [w for w in wires if w.any()]
        if not wires:
            continue
        if percolates(np.logical_or.reduce(wires)) == want_percolation:
            return wires
    raise RuntimeError(
        f"could not draw a {morphology} layout with the right percolation label at {size} px "
        f"in {MAX_LAYOUT_ATTEMPTS} attempts"
    )


# ----------------------------------------------------------------------------------------------------------
# Imaging: film, illumination, optics, detector
# ----------------------------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Multiplicative beam profile: a linear tilt plus an off-centre radial fall-off (vignette)."""
    rows, cols = np.mgrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
    tilt = rng.uniform(-0.12, 0.12) * rows + rng.uniform(-0.12, 0.12) * cols
    r0, c0 = rng.uniform(-0.5, 0.5, size=2)
    vignette = rng.uniform(0.0, 0.15) * ((rows - r0) ** 2 + (cols - c0) ** 2) / 2
    return 1.0 + tilt - vignette


def beam_profile(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """The TEM images' uneven illumination: `illumination` (tilt and vignette) plus, sometimes, a dark
    corner where the beam's edge or a thicker film rim reaches into the field (as in the real singular panel)."""
    profile = 1.0 + 0.6 * (illumination(rng, shape) - 1.0)
    if rng.random() < 0.3:
        rows, cols = np.mgrid[0 : 1 : shape[0] * 1j, 0 : 1 : shape[1] * 1j]
        corner = rng.integers(0, 2, size=2)
        distance = np.hypot(rows - corner[0], cols - corner[1])
        reach = rng.uniform(0.2, 0.45)
        profile = profile * (1.0 - rng.uniform(0.05, 0.15) / (1.0 + np.exp((distance - reach) / 0.05)))
    return profile


def amorphous_film(rng: np.random.Generator, shape: tuple[int, int], scale: float,
                   strength: tuple[float, float] = GRAIN_STRENGTH,
                   sigma: tuple[float, float] = GRAIN_SIGMA) -> np.ndarray:
    """Bright support film: a random level, slow thickness variation and fine phase-contrast grain."""
    level = rng.uniform(0.5, 0.8)
    slow = smooth_noise(rng, shape, sigma=shape[0] / rng.uniform(4, 10)) * rng.uniform(0.01, 0.04)
    grain = smooth_noise(rng, shape, sigma=rng.uniform(*sigma) * scale) * rng.uniform(*strength)
    return level * (1.0 + slow + grain)


def defocus(rng: np.random.Generator, image: np.ndarray, scale: float,
            blur: tuple[float, float] = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur plus a faint Fresnel-like overshoot that rims dark objects with a bright halo."""
    sigma = rng.uniform(*blur) * scale
    blurred = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    halo = blurred - ndimage.gaussian_filter(blurred, sigma=2.5 * max(sigma, 0.5 * scale), mode="nearest")
    return blurred + rng.uniform(0.0, 0.5) * halo


def shot_noise(rng: np.random.Generator, image: np.ndarray, dose_range: tuple[float, float]) -> np.ndarray:
    """Poisson counting noise at a random electron dose (counts per pixel at intensity 1)."""
    dose = 10 ** rng.uniform(np.log10(dose_range[0]), np.log10(dose_range[1]))
    return rng.poisson(np.clip(image, 0.0, None) * dose) / dose


def _debris(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Transmission of a few small soft particles lying on the film (not wires, so not in the mask)."""
    spots = np.zeros(shape)
    for _ in range(int(rng.integers(0, 4))):
        rows, cols = draw.disk(tuple(rng.uniform(0, shape[0], size=2)), rng.uniform(0.8, 4.0) * scale, shape=shape)
        spots[rows, cols] = np.maximum(spots[rows, cols], rng.uniform(0.05, 0.2))
    return 1.0 - ndimage.gaussian_filter(spots, 0.8 * scale)


def projected_thickness(wire: np.ndarray, scale: float) -> np.ndarray:
    """Relative projected thickness (0-1) over a wire's pixels: a cylinder's chord sqrt(1 - (d / R)^2), d
    the distance from the centreline and R the local half-width (the local maximum of the distance to the
    background), so a wire is darkest along its axis and lighter at its rims; 0 off the wire."""
    if not wire.any():
        return np.zeros(wire.shape)
    rows, cols = np.nonzero(wire)
    pad = int(np.ceil(6 * scale)) + 2
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, wire.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, wire.shape[1])
    box = wire[r0:r1, c0:c1]
    inside = ndimage.distance_transform_edt(np.pad(box, 1))[1:-1, 1:-1]
    radius = np.maximum(ndimage.maximum_filter(inside, size=int(2 * np.ceil(inside.max()) + 1)), 0.5)
    chord = np.sqrt(np.clip(1.0 - ((radius - inside + 0.5) / (radius + 0.5)) ** 2, 0.0, 1.0)) * box
    out = np.zeros(wire.shape)
    out[r0:r1, c0:c1] = chord
    return out


def render_tem(rng: np.random.Generator, wires: list[np.ndarray], shape: tuple[int, int],
               morphology: str = "network") -> np.ndarray:
    """TEM-like intensity image (float, ~[0, 1]) of the given wire masks on an amorphous film.

    Each wire absorbs along a cylinder's chord (`projected_thickness`) at a contrast drawn per wire, varied
    along it by a slow field (beaded, thicker and thinner stretches). Thin wires get the low contrast of the
    real panels (CONTRAST_TO_GRAIN times the grain's strength); the strands of a bundle's fibre
    STRAND_CONTRAST each, multiplying where they overlap; a bundle image gets the weak, smooth grain of the
    real bundle panel.
    """
    scale = shape[0] / REFERENCE_SIZE
    bundle = morphology == "bundle"
    # Beaded stretches along thin wires; in a fibre, slower and weaker (its texture comes from its strands).
    beading = smooth_noise(rng, shape, sigma=(6.0 if bundle else 2.5) * scale)
    strength = np.clip(1.0 + (0.1 if bundle else 0.25) * beading, 0.5, 1.5)
    # Thin wires stand out of the grain by about as much in every real panel: their contrast follows the
    # grain's strength (both grow with defocus), so no image has invisible wires or no grain.
    grain_strength = rng.uniform(*(BUNDLE_GRAIN_STRENGTH if bundle else GRAIN_STRENGTH))
    thin_contrast = float(np.clip(grain_strength * rng.uniform(*CONTRAST_TO_GRAIN), 0.12, 0.55))
    strand_contrast = rng.uniform(*STRAND_CONTRAST)
    optical_depth = np.zeros(shape)
    for wire in wires:
        thickness = projected_thickness(wire, scale)
        core = (strand_contrast * rng.uniform(0.85, 1.15)) if bundle else (thin_contrast * rng.uniform(0.8, 1.2))
        optical_depth -= np.log1p(-np.clip(core * thickness * strength, 0.0, 0.95))
    transmission = np.exp(-optical_depth) * _debris(rng, shape, scale)
    grain_sigma = BUNDLE_GRAIN_SIGMA if bundle else GRAIN_SIGMA
    film = amorphous_film(rng, shape, scale, (grain_strength, grain_strength), grain_sigma)
    image = film * transmission * beam_profile(rng, shape)
    image = defocus(rng, image, scale, BUNDLE_BLUR_SIGMA if bundle else BLUR_SIGMA)
    return shot_noise(rng, image, BUNDLE_DOSE if bundle else DOSE)


# ----------------------------------------------------------------------------------------------------------
# The microscope's scale bar
# ----------------------------------------------------------------------------------------------------------

# A 3 x 5 pixel font for the scale bar's label, one string of 15 bits (row by row) per glyph.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "5": "111100111001111",
    "n": "000000110101101", "m": "000000111111101", " ": "000000000000000",
}
_BAR_LABELS = ("100 nm", "200 nm", "50 nm", "500 nm", "20 nm")
_BAR_ROWS = 17  # the box's height in the real panels' pixels (~300 px side); the patch is drawn there


def scale_bar_box(rng: np.random.Generator, size: int) -> tuple[slice, slice]:
    """Where the microscope's scale bar goes: a box 5-7 % of the side high and 25-40 % wide (as in the
    real panels), at the bottom border, mostly in the right corner."""
    height = max(4, int(round(rng.uniform(0.05, 0.07) * size)))
    width = max(10, int(round(rng.uniform(0.25, 0.4) * size)))
    margin = int(round(rng.uniform(0.0, 0.02) * size))
    top = size - height - int(round(rng.uniform(0.0, 0.01) * size))
    left = size - margin - width if rng.random() < 0.8 else margin
    return slice(top, top + height), slice(left, left + width)


def _scale_bar_patch(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The scale bar drawn at the real panels' resolution: white box, black bar with end ticks across its
    upper part, a label such as '100 nm' centred below it; then area-averaged to height x width px."""
    rows = _BAR_ROWS
    cols = max(int(round(rows * width / height)), 12)
    patch = np.ones((rows, cols))
    left, right = int(round(0.06 * cols)), int(round(0.94 * cols))
    patch[3:5, left:right] = 0.0
    patch[1:7, left : left + 2] = 0.0
    patch[1:7, right - 2 : right] = 0.0
    text = _BAR_LABELS[int(rng.integers(len(_BAR_LABELS)))]
    glyph_scale = 1
    text_width = (4 * len(text) - 1) * glyph_scale
    c0 = max(0, (cols - text_width) // 2)
    r0 = 9 if glyph_scale == 1 else 7
    ink = rng.uniform(0.0, 0.2)
    for k, char in enumerate(text):
        glyph = np.array([int(b) for b in _FONT[char]], dtype=bool).reshape(5, 3)
        glyph = np.kron(glyph, np.ones((glyph_scale, glyph_scale), dtype=bool))
        gc = c0 + 4 * k * glyph_scale
        region = patch[r0 : r0 + glyph.shape[0], gc : gc + glyph.shape[1]]
        region[glyph[: region.shape[0], : region.shape[1]]] = ink
    # Area averaging keeps the white box exactly white where no ink falls within a pixel.
    return np.asarray(Image.fromarray(patch.astype(np.float32), mode="F").resize((width, height), Image.BOX))


def draw_scale_bar(rng: np.random.Generator, image: np.ndarray, box: tuple[slice, slice]) -> None:
    """Burn a scale bar into `image` (in place), as the microscope software writes it: it hides whatever lies
    beneath, so it is no part of the wire mask."""
    rows, cols = box
    patch = _scale_bar_patch(rng, rows.stop - rows.start, cols.stop - cols.start)
    image[rows, cols] = np.where(patch >= 1.0 - 1e-6, 1.0, patch)


def generate_nanowire_image(morphology: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic nanowire TEM image (uint16, (size, size)) and its exact wire mask (bool, same shape).

    The mask holds exactly the wire pixels as drawn, before blur and noise, less what the scale bar covers.
    """
    if size < 16:
        raise ValueError(f"image size must be at least 16 px, got {size}")
    if morphology not in _LAYOUTS:
        raise ValueError(f"unknown morphology '{morphology}' (choose from {', '.join(CLASSES)})")
    box = scale_bar_box(rng, size)
    hidden = np.zeros((size, size), dtype=bool)
    hidden[box] = True
    wires = wire_layout(morphology, size, rng, hidden)
    image = render_tem(rng, wires, (size, size), morphology)
    image = np.clip(image, 0.0, 1.0 - 1.0 / 65535)  # only the scale bar's box is pure white
    draw_scale_bar(rng, image, box)
    mask = np.logical_or.reduce(wires)
    return np.round(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16), mask


def label_png(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB label in the public Zenodo set's encoding: green differs from blue exactly at wire pixels.

    The image is drawn in gray (R = G = B) and wire pixels are painted pure green (G = 255, B = 0).
    """
    gray = (image.astype(np.uint32) * 255 // 65535).astype(np.uint8) if image.dtype == np.uint16 else image
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[mask] = (0, 255, 0)
    return rgb


def _image_rng(seed: int, *words: int) -> np.random.Generator:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


PARALLEL_FROM = 64  # images; smaller sets are written without worker processes


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_all(write: Callable[[tuple], Path], jobs: list[tuple], workers: int | None, desc: str,
               progress: bool) -> list[Path]:
    """`write(job)` for every job, results in job order, over `workers` processes (default: `usable_cpus` for at
    least PARALLEL_FROM jobs; fewer are written in this process, as starting a worker costs about a second).

    Every image is a pure function of its own seed, so the files are byte for byte the same whatever the number
    of workers (tests/data/test_synthetic.py). Workers are spawned, not forked: they start clean on every OS and
    inherit the environment, including the CPU-kernel pins of `nanomorph.stages`.
    """
    if workers is None:
        workers = usable_cpus() if len(jobs) >= PARALLEL_FROM else 1
    workers = min(workers, len(jobs))
    bar = {"total": len(jobs), "desc": desc, "unit": "img", "disable": not progress}
    if workers <= 1:
        return [write(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(tqdm(pool.map(write, jobs, chunksize=max(1, len(jobs) // (8 * workers))), **bar))


def _write_nanowire(job: tuple[Path, str, int, int, int]) -> Path:
    out_dir, name, i, size, seed = job
    image, mask = generate_nanowire_image(name, size, _image_rng(seed, _NANOWIRE_STREAM, CLASSES.index(name), i))
    image_dir, label_dir = out_dir / name / "images", out_dir / name / "labels"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    image_path = image_dir / f"{name}_{i:03d}.tif"
    tifffile.imwrite(image_path, image)
    Image.fromarray(label_png(image, mask)).save(label_dir / f"{name}_{i:03d}.png")
    return image_path


def write_nanowire_dataset(
    out_dir: str | Path,
    classes: Sequence[str],
    images_per_class: int,
    size: int,
    seed: int,
    progress: bool = True,
    workers: int | None = None,
) -> list[Path]:
    """Write `out_dir/<class>/images/<class>_<i:03d>.tif` (uint16) and `labels/<class>_<i:03d>.png` (RGB).

    Image i of a class is seeded from (seed, class's index in CLASSES, i), so it does not depend on how many
    images or which other classes are written, nor on the number of `workers` (processes; default: every CPU
    this process may use, for PARALLEL_FROM images or more). Returns the image paths in writing order.
    """
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown} (choose from {', '.join(CLASSES)})")
    _image_rng(seed)  # refuse a bad seed here, not in a worker
    jobs = [(Path(out_dir), name, i, size, seed) for name in classes for i in range(images_per_class)]
    return _write_all(_write_nanowire, jobs, workers, "nanowire images", progress)


# ----------------------------------------------------------------------------------------------------------
# Generic EM textures for pretraining
# ----------------------------------------------------------------------------------------------------------


def _compartments(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell-like compartments: Voronoi cells of randomly warped coordinates -> (labels, membrane mask).

    Warping the coordinates with a smooth displacement field bends the straight Voronoi edges into curved
    membranes.
    """
    n_cells = int(rng.integers(3, 30))
    seeds = rng.uniform(0, 1, size=(n_cells, 2)) * np.asarray(shape)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    amplitude = rng.uniform(0.0, 0.08) * shape[0]
    sigma = shape[0] / rng.uniform(4, 10)
    rows += amplitude * smooth_noise(rng, shape, sigma)
    cols += amplitude * smooth_noise(rng, shape, sigma)
    _, labels = cKDTree(seeds).query(np.stack([rows.ravel(), cols.ravel()], axis=1))
    labels = labels.reshape(shape)
    membranes = segmentation.find_boundaries(labels, mode="inner")
    thickness = int(round(rng.uniform(0.0, 1.5) * scale))
    if thickness > 0:
        membranes = ndimage.binary_dilation(membranes, structure=disk(thickness))
    return labels, membranes


def _vesicles(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Round vesicles: a dark membrane ring around a lighter or darker lumen (drawn in place)."""
    shape = image.shape
    lumen_shift = rng.uniform(-0.15, 0.15)
    for _ in range(int(rng.integers(0, 40))):
        centre = tuple(rng.uniform(0, shape[0], size=2))
        radius = rng.uniform(1.5, 6.0) * scale
        rows, cols = draw.disk(centre, radius, shape=shape)
        image[rows, cols] -= 0.25
        rows, cols = draw.disk(centre, max(radius - max(1.0, 0.8 * scale), 0.5), shape=shape)
        image[rows, cols] += 0.25 + lumen_shift + rng.normal(0, 0.03)


def _granules(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Dense granules / ribosome-like dots: blurred point impulses (a darkening map)."""
    impulses = np.zeros(shape)
    n = int(rng.integers(0, 120))
    rows = rng.integers(0, shape[0], n)
    cols = rng.integers(0, shape[1], n)
    impulses[rows, cols] = rng.uniform(0.5, 1.0, n)
    sigma = rng.uniform(0.7, 1.8) * scale
    blobs = ndimage.gaussian_filter(impulses, sigma) * (2 * np.pi * sigma**2)
    return np.clip(blobs, 0, 1) * rng.uniform(0.2, 0.5)


def _organelles(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Mitochondrion-like ellipses: dark outline, darker matrix, striped cristae (drawn in place)."""
    shape = image.shape
    for _ in range(int(rng.integers(0, 4))):
        centre = rng.uniform(0.1, 0.9, size=2) * np.asarray(shape)
        minor = rng.uniform(5, 12) * scale
        major = minor * rng.uniform(1.3, 3.0)
        angle = rng.uniform(-np.pi, np.pi)
        rows, cols = draw.ellipse(centre[0], centre[1], minor, major, shape=shape, rotation=angle)
        if len(rows) == 0:
            continue
        # Stripes across the long axis: project pixel positions onto it.
        along = (rows - centre[0]) * np.sin(angle) + (cols - centre[1]) * np.cos(angle)
        period = rng.uniform(3, 6) * scale
        cristae = 0.5 + 0.5 * np.cos(2 * np.pi * along / period)
        image[rows, cols] -= 0.1 + 0.12 * cristae
        body = np.zeros(shape, dtype=bool)
        body[rows, cols] = True
        image[segmentation.find_boundaries(body, mode="inner")] -= 0.2


def _fibres(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Cytoskeleton- or collagen-like thin curved filaments (a boolean map)."""
    fibres = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(0, 8))):
        points = smooth_curve(
            rng, rng.uniform(0, 1, size=2) * shape[0], rng.uniform(0, np.pi), rng.uniform(0.2, 0.9) * shape[0], 1.2
        )
        fibres |= rasterise_wire(points, max(MIN_WIRE_WIDTH, rng.uniform(1.0, 2.0) * scale), shape)
    return fibres


def generate_generic_em_image(size: int, rng: np.random.Generator) -> np.ndarray:
    """One generic EM-like texture (uint8, (size, size)): a random mix of compartments separated by dark
    membranes, vesicles, granules, organelles and filaments, under uneven illumination, blur and noise."""
    if size < 16:
        raise ValueError(f"image size must be at least 16 px, got {size}")
    shape = (size, size)
    scale = _scale(size)
    image = rng.uniform(0.45, 0.7) + 0.04 * smooth_noise(rng, shape, shape[0] / rng.uniform(4, 10))
    if rng.random() < 0.85:
        labels, membranes = _compartments(rng, shape, scale)
        # Each compartment has its own stain density and, sometimes, its own grainy texture.
        tone = rng.normal(0.0, 0.08, size=labels.max() + 1)
        grain = rng.uniform(0.0, 0.08, size=labels.max() + 1)
        image = image + tone[labels] + grain[labels] * smooth_noise(rng, shape, rng.uniform(0.6, 1.5) * scale)
        image[membranes] -= rng.uniform(0.2, 0.45)
    if rng.random() < 0.5:
        image[_fibres(rng, shape, scale)] -= rng.uniform(0.1, 0.3)
    _organelles(rng, image, scale)
    _vesicles(rng, image, scale)
    image = image - _granules(rng, shape, scale)
    image = image * illumination(rng, shape)
    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 1.2) * scale)
    image = shot_noise(rng, np.clip(image, 0.0, None), (50.0, 1000.0))
    # Detectors and exports stretch contrast differently; a random window keeps the histograms varied.
    lo, hi = np.percentile(image, [rng.uniform(0.0, 2.0), rng.uniform(98.0, 100.0)])
    image = (image - lo) / max(hi - lo, 1e-6) * rng.uniform(0.7, 1.0) + rng.uniform(0.0, 0.15)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _write_generic(job: tuple[Path, int, int, int]) -> Path:
    out_dir, i, size, seed = job
    path = out_dir / f"synthetic_em_{i:05d}.png"
    Image.fromarray(generate_generic_em_image(size, _image_rng(seed, _GENERIC_STREAM, i))).save(path)
    return path


def write_generic_em_dataset(
    out_dir: str | Path, n_images: int, size: int, seed: int, progress: bool = True, workers: int | None = None,
) -> list[Path]:
    """Write `out_dir/synthetic_em_<i:05d>.png` (8-bit grayscale), CEM500K's flat layout; returns the paths.

    Image i is seeded from (seed, i) alone, so it does not depend on `n_images` or the number of `workers`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _image_rng(seed)
    return _write_all(_write_generic, [(out_dir, i, size, seed) for i in range(n_images)], workers,
                      "generic EM images", progress)
