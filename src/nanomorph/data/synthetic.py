"""Procedural stand-ins for the paper's data, so the pipeline runs without a network connection.

* Nanowire TEM images in the four morphologies of Lu et al. (arXiv 2203.13875): dark, gently curved wires on
  a bright amorphous carbon film, with uneven illumination, defocus blur and shot noise. Each image comes
  with the exact wire mask, and the percolation label is enforced: every `network` image percolates by the
  paper's rule (`nanomorph.analysis.percolation.percolates`), no other image does.
* Generic EM textures (membranes, vesicles, granules, organelles) standing in for CEM500K in pretraining.

Calibration on the paper's four real panels (../shared/data/lu2022-figure, Fig. 2B; one per class, CC0), by
realism alone (never by how a method scores): `benchmarks/generator_realism.py` measures the statistics of
nanomorph.data.realism.image_statistics on the panels (less the quarter holding the figure's pasted label) and on
25 generated images per class at 256 px (the panels' pixel count for the field of view), generator seed 7.
Real / generated median after calibration (benchmarks/results/generator_realism.json):

| class | high-pass noise | grain lag-1 correlation | contrast-to-noise | illumination |
|---|---|---|---|---|
| bundle | 0.050 / 0.068 | 0.74 / 0.40 | 16.9 / 11.4 | 0.22 / 0.19 |
| dispersed | 0.156 / 0.140 | 0.21 / 0.36 | 3.4 / 4.2 | 0.085 / 0.093 |
| network | 0.190 / 0.132 | 0.22 / 0.42 | 2.6 / 4.9 | 0.041 / 0.080 |
| singular | 0.124 / 0.123 | 0.26 / 0.33 | 2.8 / 4.9 | 0.031 / 0.070 |

Before calibration the thin-wire classes had contrast-to-noise ~5-6 at 128 px (crisp dark lines), bundles were
bundles of separate thin lines, wires nearly straight (total turn <= 0.8 rad) and of constant width, no scale
bar. What changed: low thin-wire contrast (CONTRAST_THIN), stronger and finer grain (GRAIN_*), less blur,
lower dose; wires turn by up to CURL radians and vary in width along their length (WIDTH_SPREAD); a bundle is
one thick fused fibre with a cylinder-like thickness profile and streaky texture (CONTRAST_THICK); singular
wires are twice as wide (the panel's higher magnification); a burned-in scale bar in a bottom corner, outside
the mask. Still off: the real grain is whiter (lag-1 ~0.2 vs ~0.35), the network panel is denser and curlier,
the real bundle panel is smoother and higher-dose than ours. The classical baseline on this data, as a
record (not a target): global Otsu median dice 0.76 before, 0.40 after; local Sauvola threshold 0.80 before,
0.68 after (100 images of seed 7 at 64 px, fitted on one image per class).

All geometry is drawn in units of the image side, with widths scaled from a 128 px reference, so an image
at another size shows the same field of view at another resolution. Every image is a pure function of its
numpy Generator; the dataset writers seed one Generator per image from (seed, class, index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
# Imaging, calibrated on the real panels (module docstring): wire contrast (1 - transmission) of thin wires and
# of fused bundles, the grain's correlation length (px at 128) and strength, defocus blur (px at 128), the
# electron dose (counts per pixel at intensity 1), and the width (px at 128) above which a wire is a bundle.
CONTRAST_THIN = (0.12, 0.3)
CONTRAST_THICK = (0.6, 0.85)
GRAIN_SIGMA = (0.4, 0.7)
GRAIN_STRENGTH = (0.05, 0.11)
BLUR_SIGMA = (0.25, 0.6)
DOSE = (80.0, 600.0)
THICK_WIRE = 8.0
MIN_WIRE_WIDTH = 1.2  # px; narrower bands rasterise into broken dotted lines
MAX_LAYOUT_ATTEMPTS = 60
# Calibrated on the paper's four real panels (module docstring, nanomorph.data.realism): relative std of a
# wire's width along its length, and the total turn (radians) of curly thin wires.
WIDTH_SPREAD = 0.25
CURL = 2.2
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
    around `bend` radians: nanowires are stiff and bend over their whole length, not in kinks.
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    s = np.linspace(0.0, 1.0, n)
    wobble = np.sin(np.pi * rng.uniform(0.5, 2.0) * s + rng.uniform(0, 2 * np.pi))
    heading = angle + bend * (rng.normal(0.0, 0.7) * (s - 0.5) + rng.normal(0.0, 0.3) * wobble)
    ds = length / (n - 1)
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
    """Pixels whose centres fall inside the band of `width` px (a scalar, or one width per centreline sample)
    around the centreline (clipped to `shape`).

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


def _scale(size: int) -> float:
    return size / REFERENCE_SIZE


def _wire_width(rng: np.random.Generator, base_width: float) -> float:
    return max(MIN_WIRE_WIDTH, base_width * rng.uniform(0.85, 1.15))


def _base_width(rng: np.random.Generator, size: int) -> float:
    # ~1.5-3.5 px at 128 px; individual wires vary +-15 % around it.
    return rng.uniform(1.5, 3.5) * _scale(size)


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


def varying_width(rng: np.random.Generator, n: int, width: float, spread: float = WIDTH_SPREAD) -> np.ndarray:
    """Widths along a wire of `n` samples: `width` times a slow random modulation of relative std `spread`
    (real wires thicken and thin along their length), never below MIN_WIRE_WIDTH."""
    field = ndimage.gaussian_filter1d(rng.standard_normal(n + 16), sigma=4.0, mode="wrap")[8:-8]
    field = (field - field.mean()) / (field.std() + 1e-12)
    return np.maximum(MIN_WIRE_WIDTH, width * (1.0 + spread * field))


def _single_wire(
    rng: np.random.Generator, size: int, width: float, length_range: tuple[float, float], centre_range: tuple[float, float], bend: float
) -> np.ndarray:
    centre = rng.uniform(*centre_range, size=2) * size
    points = smooth_curve(rng, centre, rng.uniform(0, np.pi), rng.uniform(*length_range) * size, rng.uniform(0.3, 1.0) * bend)
    return rasterise_wire(points, varying_width(rng, len(points), width), (size, size))


def _singular_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """One to three long isolated wires, imaged at higher magnification than the crowded classes (the real
    singular panel's 70 nm bar against 100-200 nm), so they are about twice as wide in pixels."""
    base = _base_width(rng, size) * 2.0

    def make() -> list[np.ndarray]:
        return [_single_wire(rng, size, _wire_width(rng, base), (0.3, 0.75), (0.2, 0.8), CURL)]

    return _place_apart(rng, make, int(rng.integers(1, 4)), (size, size), margin=6 * _scale(size))


def _dispersed_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """Five to forty short separate wires scattered over the film; they must not form a spanning cluster.

    Crowded dispersed films are as dense as sparse networks (as in the real TEM set): density alone does not
    separate the two classes, percolation does, and one-shot anchors can sit on the wrong side of the
    density boundary (the paper's anchor finding needs such draws to be testable).
    """
    base = _base_width(rng, size)

    def make() -> list[np.ndarray]:
        return [_single_wire(rng, size, _wire_width(rng, base), (0.12, 0.35), (0.05, 0.95), CURL)]

    return _place_apart(rng, make, int(rng.integers(6, 40)), (size, size), margin=2.5 * _scale(size))


def _network_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """Four to thirty long wires crossing each other and the image border; denser on each retry until it
    percolates, so sparse networks are only as dense as they must be to span the image."""
    base = _base_width(rng, size)
    count = int(rng.integers(4, 30)) + 3 * attempt
    return [
        _single_wire(rng, size, _wire_width(rng, base), (0.5, 1.1), (-0.05, 1.05), CURL) for _ in range(count)
    ]


def _bundle_fibre(rng: np.random.Generator, size: int) -> np.ndarray:
    """One thick fibre of many fused wires: a gently curved band 15-45 % of the side wide (width varying along
    it), crossing most of the field of view, as the real bundle panels show."""
    width = rng.uniform(0.15, 0.45) * size
    centre = rng.uniform(0.3, 0.7, size=2) * size
    axis = smooth_curve(rng, centre, rng.uniform(0, np.pi), rng.uniform(0.9, 1.5) * size, rng.uniform(0.0, 0.8),
                        step=max(1.5, width / 8))
    return rasterise_wire(axis, varying_width(rng, len(axis), width, spread=0.15), (size, size), piece=4)


def _bundle_layout(rng: np.random.Generator, size: int, attempt: int) -> list[np.ndarray]:
    """One thick fused fibre, sometimes with a stray single wire or two beside it."""
    base = _base_width(rng, size)
    fibre = _bundle_fibre(rng, size)
    keep_out = ndimage.binary_dilation(fibre, iterations=3)
    strays = []
    for _ in range(int(rng.integers(0, 3))):
        wire = _single_wire(rng, size, _wire_width(rng, base), (0.1, 0.3), (0.1, 0.9), CURL)
        if not (ndimage.binary_dilation(wire, iterations=3) & keep_out).any():
            strays.append(wire)
            keep_out |= wire
    return [fibre] + strays


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
    the label is checked on what the image shows.
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


def amorphous_film(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Bright support film: a random level, slow thickness variation and strong fine phase-contrast grain."""
    level = rng.uniform(0.5, 0.85)
    slow = smooth_noise(rng, shape, sigma=shape[0] / rng.uniform(5, 12)) * rng.uniform(0.01, 0.05)
    grain = smooth_noise(rng, shape, sigma=rng.uniform(GRAIN_SIGMA[0], GRAIN_SIGMA[1]) * scale) \
        * rng.uniform(*GRAIN_STRENGTH)
    return level * (1.0 + slow + grain)


def defocus(rng: np.random.Generator, image: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian blur plus a faint Fresnel-like overshoot that rims dark objects with a bright halo."""
    sigma = rng.uniform(*BLUR_SIGMA) * scale
    blurred = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
    halo = blurred - ndimage.gaussian_filter(blurred, sigma=2.5 * sigma, mode="nearest")
    return blurred + rng.uniform(0.0, 0.6) * halo


def shot_noise(rng: np.random.Generator, image: np.ndarray, dose_range: tuple[float, float]) -> np.ndarray:
    """Poisson counting noise at a random electron dose (counts per pixel at intensity 1)."""
    dose = 10 ** rng.uniform(np.log10(dose_range[0]), np.log10(dose_range[1]))
    return rng.poisson(np.clip(image, 0.0, None) * dose) / dose


def _debris(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Transmission of a few small particles lying on the film (not wires, so not in the mask)."""
    transmission = np.ones(shape)
    for _ in range(int(rng.integers(0, 8))):
        rows, cols = draw.disk(
            tuple(rng.uniform(0, shape[0], size=2)), rng.uniform(0.8, 2.5) * scale, shape=shape
        )
        transmission[rows, cols] *= 1.0 - rng.uniform(0.1, 0.4)
    return transmission


def projected_thickness(wire: np.ndarray, scale: float) -> np.ndarray:
    """Relative projected thickness (0-1) of a wire's pixels: a cylinder's chord, sqrt(1 - (d/R)^2) with d the
    distance from the centreline, so wide fibres are darkest along their axis and lighter at the rims."""
    inside = ndimage.distance_transform_edt(wire)
    radius = max(float(inside.max()), 0.5 * scale)
    return np.sqrt(np.clip(1.0 - ((radius - inside) / radius) ** 2, 0.0, 1.0)) * wire


def render_tem(rng: np.random.Generator, wires: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """TEM-like intensity image (float, ~[0, 1]) of the given wire masks on an amorphous film.

    Thin wires get the low contrast of the real panels (CONTRAST_THIN); a wire wider than THICK_WIRE px at
    the 128 px reference (a fused bundle) the strong one of the real bundle (CONTRAST_THICK), with a
    streaky internal texture along its length.
    """
    scale = shape[0] / REFERENCE_SIZE
    # Wires absorb more where they are thicker or diffract more strongly; a slow field varies this along them.
    strength = np.clip(1.0 + 0.2 * smooth_noise(rng, shape, sigma=shape[0] / 10), 0.5, 1.5)
    thin_contrast = rng.uniform(*CONTRAST_THIN)
    transmission = np.ones(shape)
    for wire in wires:
        thickness = projected_thickness(wire, scale)
        if ndimage.distance_transform_edt(wire).max() * 2 > THICK_WIRE * scale:
            texture = np.clip(1.0 + 0.12 * smooth_noise(rng, shape, sigma=3.0 * scale), 0.6, 1.4)
            contrast = rng.uniform(*CONTRAST_THICK) * np.clip(0.55 + 0.45 * thickness, 0, 1) * texture
        else:
            contrast = np.clip(thin_contrast * rng.uniform(0.8, 1.2), 0.05, 0.9) * np.clip(0.6 + 0.4 * thickness, 0, 1)
        transmission[wire] *= np.clip(1.0 - (contrast * strength)[wire], 0.05, 1.0)
    transmission *= _debris(rng, shape, scale)
    image = amorphous_film(rng, shape, scale) * transmission * illumination(rng, shape)
    return shot_noise(rng, defocus(rng, image, scale), DOSE)


def scale_bar_box(rng: np.random.Generator, size: int) -> tuple[slice, slice]:
    """Where the microscope's scale bar goes: a box of about 30 x 8 % of the side in a bottom corner."""
    height, width = max(4, int(round(rng.uniform(0.07, 0.1) * size))), max(8, int(round(rng.uniform(0.25, 0.35) * size)))
    margin = max(1, int(round(0.02 * size)))
    top = size - margin - height
    left = size - margin - width if rng.random() < 0.75 else margin
    return slice(top, top + height), slice(left, left + width)


def draw_scale_bar(rng: np.random.Generator, image: np.ndarray, box: tuple[slice, slice]) -> None:
    """Burn a scale bar into `image` (in place): a white box holding a black bar and a row of text-like marks,
    as the microscope software writes it; it hides whatever lies beneath, so it is no part of the mask."""
    rows, cols = box
    h, w = rows.stop - rows.start, cols.stop - cols.start
    patch = np.ones((h, w))
    bar_row = int(round(0.7 * h))
    patch[bar_row : bar_row + max(1, h // 8), int(0.1 * w) : int(0.9 * w)] = 0.0
    # "100 nm": a few glyph-sized dark marks centred above the bar.
    glyphs = int(rng.integers(4, 7))
    glyph_w = max(1, w // 16)
    start = (w - glyphs * 2 * glyph_w) // 2
    for g in range(glyphs):
        c0 = start + 2 * g * glyph_w
        patch[max(1, h // 6) : max(2, int(0.5 * h)), c0 : c0 + glyph_w] = rng.uniform(0.0, 0.3)
    image[rows, cols] = patch


def generate_nanowire_image(morphology: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic nanowire TEM image (uint16, (size, size)) and its exact wire mask (bool, same shape).

    The mask holds exactly the wire pixels as drawn, before blur and noise, less what the scale bar covers.
    """
    if size < 16:
        raise ValueError(f"image size must be at least 16 px, got {size}")
    box = scale_bar_box(rng, size)
    hidden = np.zeros((size, size), dtype=bool)
    hidden[box] = True
    wires = wire_layout(morphology, size, rng, hidden)
    image = render_tem(rng, wires, (size, size))
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


def write_nanowire_dataset(
    out_dir: str | Path,
    classes: Sequence[str],
    images_per_class: int,
    size: int,
    seed: int,
    progress: bool = True,
) -> list[Path]:
    """Write `out_dir/<class>/images/<class>_<i:03d>.tif` (uint16) and `labels/<class>_<i:03d>.png` (RGB).

    Image i of a class is seeded from (seed, class's index in CLASSES, i), so it does not depend on how many
    images or which other classes are written. Returns the image paths in writing order.
    """
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown} (choose from {', '.join(CLASSES)})")
    out_dir = Path(out_dir)
    jobs = [(name, i) for name in classes for i in range(images_per_class)]
    written = []
    for name, i in tqdm(jobs, desc="nanowire images", unit="img", disable=not progress):
        rng = _image_rng(seed, _NANOWIRE_STREAM, CLASSES.index(name), i)
        image, mask = generate_nanowire_image(name, size, rng)
        image_dir, label_dir = out_dir / name / "images", out_dir / name / "labels"
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        image_path = image_dir / f"{name}_{i:03d}.tif"
        tifffile.imwrite(image_path, image)
        Image.fromarray(label_png(image, mask)).save(label_dir / f"{name}_{i:03d}.png")
        written.append(image_path)
    return written


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


def write_generic_em_dataset(
    out_dir: str | Path, n_images: int, size: int, seed: int, progress: bool = True
) -> list[Path]:
    """Write `out_dir/synthetic_em_<i:05d>.png` (8-bit grayscale), CEM500K's flat layout; returns the paths.

    Image i is seeded from (seed, i) alone, so it does not depend on `n_images`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in tqdm(range(n_images), desc="generic EM images", unit="img", disable=not progress):
        image = generate_generic_em_image(size, _image_rng(seed, _GENERIC_STREAM, i))
        path = out_dir / f"synthetic_em_{i:05d}.png"
        Image.fromarray(image).save(path)
        written.append(path)
    return written
