"""The classical baseline encoder of the probe: hand-crafted intensity, texture and morphology features.

What a microscopist would compute without any learning, all from scikit-image, on each (H, W) [0, 1] image:

* intensity (13): mean, standard deviation, skewness, the 5/25/50/75/95 % quantiles, and a 5-bin histogram of
  the image stretched between its own 1 % and 99 % quantiles;
* texture (22): grey-level co-occurrence (32 grey levels of the stretched image, distances 1, 2 and 4 px,
  averaged over 0/45/90/135 degrees): contrast, homogeneity, energy, correlation (12); the histogram of
  uniform local binary patterns (P=8, R=1: 10 bins);
* morphology (8) of the global Otsu foreground (objects darker than the film, the same small-object clean-up as
  the analysis, `min_size` px, 8-connectivity): foreground fraction, object count per 1000 px, largest
  object's share of the foreground, mean object area, the largest object's bounding-box extent along rows and
  columns (fraction of the side: near 1 when it spans the image, the percolation criterion), skeleton length
  per foreground pixel (inverse mean width), and the Euler number per 1000 px (loops of a network).

`classical_features` returns float32 (N, len(FEATURE_NAMES)); the probe standardises every feature on its own
training rows, as for the learned encoders.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from skimage.filters import threshold_otsu
from skimage.measure import euler_number, label, regionprops
from skimage.morphology import skeletonize

from nanomorph.analysis.objects import label_objects

NAME = "classical"
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
LBP_POINTS, LBP_RADIUS = 8, 1
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_BINS = 5

FEATURE_NAMES = (
    ["mean", "std", "skew"] + [f"q{int(q * 100)}" for q in QUANTILES] + [f"hist{i}" for i in range(HIST_BINS)]
    + [f"glcm_{p}_d{d}" for d in GLCM_DISTANCES for p in GLCM_PROPS]
    + [f"lbp{i}" for i in range(LBP_POINTS + 2)]
    + ["fg_fraction", "objects_per_kpx", "largest_share", "mean_object_area", "largest_extent_rows",
       "largest_extent_cols", "skeleton_per_fg", "euler_per_kpx"]
)


def stretch(image: np.ndarray) -> np.ndarray:
    """The image mapped linearly from its 1-99 % quantiles to [0, 1] (clipped): exposure-independent texture."""
    lo, hi = np.quantile(image, [0.01, 0.99])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def otsu_foreground(image: np.ndarray, darker: bool = True, min_size: int = 4) -> np.ndarray:
    """Global Otsu mask of the objects (darker than the film by default), objects under `min_size` px removed."""
    if np.ptp(image) == 0:
        return np.zeros(image.shape, dtype=bool)
    threshold = threshold_otsu(image)
    mask = image < threshold if darker else image > threshold
    return label_objects(mask, min_size) > 0


def _morphology(mask: np.ndarray) -> list[float]:
    side_r, side_c = mask.shape
    kpx = mask.size / 1000.0
    fg = int(mask.sum())
    if fg == 0:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, euler_number(mask, connectivity=2) / kpx]
    objects = label(mask, connectivity=2)
    props = regionprops(objects)
    areas = np.array([p.area for p in props], dtype=float)
    largest = props[int(np.argmax(areas))]
    r0, c0, r1, c1 = largest.bbox
    return [fg / mask.size, len(props) / kpx, areas.max() / fg, areas.mean(), (r1 - r0) / side_r,
            (c1 - c0) / side_c, skeletonize(mask).sum() / fg, euler_number(mask, connectivity=2) / kpx]


def image_features(image: np.ndarray, min_size: int = 4) -> np.ndarray:
    """The FEATURE_NAMES vector of one (H, W) float image in [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    flat = image.ravel()
    intensity = [flat.mean(), flat.std(), float(stats.skew(flat)) if flat.std() > 0 else 0.0,
                 *np.quantile(flat, QUANTILES)]
    stretched = stretch(image)
    hist = np.histogram(stretched, bins=HIST_BINS, range=(0.0, 1.0))[0] / stretched.size
    levels = np.minimum((stretched * GLCM_LEVELS).astype(np.uint8), GLCM_LEVELS - 1)
    glcm = graycomatrix(levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    texture = [graycoprops(glcm, p)[d].mean() for d in range(len(GLCM_DISTANCES)) for p in GLCM_PROPS]
    lbp = local_binary_pattern((stretched * 255).astype(np.uint8), LBP_POINTS, LBP_RADIUS, method="uniform")
    lbp_hist = np.bincount(lbp.astype(int).ravel(), minlength=LBP_POINTS + 2)[: LBP_POINTS + 2] / lbp.size
    morphology = _morphology(otsu_foreground(image, darker=True, min_size=min_size))
    vector = np.array([*intensity, *hist, *texture, *lbp_hist, *morphology], dtype=np.float64)
    return np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)


def classical_features(images: np.ndarray, min_size: int = 4) -> np.ndarray:
    """float32 (N, len(FEATURE_NAMES)) classical features of (N, H, W) [0, 1] images."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), got {images.shape}")
    if len(images) == 0:
        return np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32)
    return np.stack([image_features(im, min_size) for im in images]).astype(np.float32)
