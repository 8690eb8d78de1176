"""Percolation of nanowire masks, after Lu et al. (arXiv 2203.13875).

The paper groups wire pixels into clusters with DBSCAN on their (row, col) coordinates and calls an image
percolated when a single cluster stretches (almost) across the whole field of view in both directions.

`wire_clusters_dbscan` is that reference, run through scikit-learn. `wire_clusters` returns the very same
labels much faster by using the fact that the points lie on a pixel grid: "within eps" becomes a fixed
stencil of integer pixel offsets, and in the mask padded by the stencil's reach every offset is a constant
shift of the flat pixel index. So
  * neighbour counts (which pixels are core) are one shifted add per offset;
  * core clusters: `scipy.ndimage.label` joins core pixels over the offsets inside the 3x3 neighbourhood;
    each longer offset is one shifted comparison of that label image, which yields the few pairs of
    components it joins; a connected-components pass over that small graph merges them, and the merged
    clusters are renumbered in the order scikit-learn discovers them;
  * a border point takes the lowest cluster number among the cores within eps, gathered at the non-core
    wire pixels only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

NOISE = -1
# The verdict each class should get (Lu et al.): network wires percolate, dispersed wires do not. Classes
# missing here (bundle, singular) have no expected verdict and are left out of agreement scores.
PERCOLATING_CLASS = {"network": True, "dispersed": False}


def _check_arguments(mask: np.ndarray, eps: float, min_samples: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite distance in pixels, got {eps}")
    if int(min_samples) != min_samples or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples}")
    return mask.astype(bool, copy=False)


def wire_clusters_dbscan(mask: np.ndarray, eps: float = 2.0, min_samples: int = 2) -> np.ndarray:
    """DBSCAN labels of the wire pixels, in row-major order of `np.nonzero(mask)`; noise is -1.

    The reference implementation (scikit-learn); slow for large masks, kept to check `wire_clusters`.
    """
    from sklearn.cluster import DBSCAN  # here: scikit-learn's import (~1 s) is paid only by the reference

    mask = _check_arguments(mask, eps, min_samples)
    points = np.argwhere(mask)
    if len(points) == 0:
        return np.empty(0, dtype=np.intp)
    labels = DBSCAN(eps=eps, min_samples=int(min_samples)).fit_predict(points.astype(np.float64))
    return labels.astype(np.intp)


def neighbourhood_offsets(eps: float) -> np.ndarray:
    """All integer offsets (dr, dc) with Euclidean length <= eps, the origin included.

    Squared lengths of integer offsets are exact integers, and scikit-learn's tree searches compare squared
    distances with eps**2 too, so the boundary case (distance == eps) is decided the same way.
    """
    reach = int(np.floor(eps))
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    inside = dr**2 + dc**2 <= eps * eps
    return np.stack([dr[inside], dc[inside]], axis=1)


def _cluster_lookup(components: np.ndarray, core: np.ndarray, n_components: int,
                    shifts: np.ndarray) -> np.ndarray:
    """Cluster number of each `ndimage.label` component, as a lookup table indexed by component.

    `components` and `core` are the flat, padded component image and core mask; `shifts` are the flat
    shifts of the stencil offsets outside the 3x3 structure, one per symmetric pair. Such an offset can
    still join two components: one whole-array comparison of the image with itself shifted finds every
    pair, and the components are merged on the small graph of those pairs. Entry 0 (the background) is the
    number of clusters, one past the last: "no cluster".
    """
    sources, targets = [np.empty(0, dtype=components.dtype)], [np.empty(0, dtype=components.dtype)]
    for shift in shifts:
        here, there = components[:-shift], components[shift:]
        joined = core[:-shift] & core[shift:]  # cheaper than testing the labels for > 0
        joined &= here != there
        sources.append(here[joined])
        targets.append(there[joined])
    sources, targets = np.concatenate(sources) - 1, np.concatenate(targets) - 1
    graph = coo_matrix((np.ones(len(sources), dtype=np.int8), (sources, targets)),
                       shape=(n_components, n_components))
    _, merged = connected_components(graph, directed=False)
    # ndimage.label numbers components in raster order of their first pixel, so a merged cluster starts
    # where its smallest component does: ranking clusters by that numbers them in the order scikit-learn's
    # DBSCAN discovers them (by their first core point), so labels match exactly, not up to a permutation.
    _, smallest = np.unique(merged, return_index=True)
    rank = np.empty(len(smallest), dtype=np.intp)
    rank[np.argsort(smallest)] = np.arange(len(smallest))
    return np.concatenate([[len(smallest)], rank[merged]])


def wire_clusters(mask: np.ndarray, eps: float = 2.0, min_samples: int = 2) -> np.ndarray:
    """DBSCAN labels of the wire pixels, computed on the pixel grid; identical to `wire_clusters_dbscan`.

    Labels are given per True pixel in row-major order of `np.nonzero(mask)`; noise is -1. Works for any
    eps > 0 and min_samples >= 1:
      * a pixel is core when >= min_samples wire pixels (itself included) lie within eps;
      * clusters are connected components of core pixels joined when within eps;
      * a border pixel (not core, a core within eps) takes the cluster that scikit-learn's DBSCAN gives it:
        DBSCAN expands clusters in order of their first core point, so the border pixel goes to the
        lowest-numbered adjacent cluster; everything else is noise.
    """
    mask = _check_arguments(mask, eps, min_samples)
    if not mask.any():
        return np.empty(0, dtype=np.intp)
    offsets = neighbourhood_offsets(eps)
    reach = int(np.abs(offsets).max())
    # Padded by the stencil's reach (plus a row, so that corner steps stay inside the array), the neighbour
    # at (dr, dc) of a mask pixel sits at its flat index + dr * width + dc, and a neighbour off the mask
    # lands on padding, never on the next or previous row: every stencil step is one contiguous slice.
    wire = np.pad(mask, ((reach + 1, reach + 1), (reach, reach)))
    width = wire.shape[1]
    is_wire = wire.ravel()
    shifts = offsets[:, 0] * width + offsets[:, 1]
    rows = slice((reach + 1) * width, (reach + 1 + mask.shape[0]) * width)  # the mask's rows, all columns

    # Neighbour counts, itself included: one shifted add per stencil offset (uint8 while the stencil has
    # < 256 offsets, i.e. eps < ~8.9: half the memory traffic of wider integers).
    counts = np.zeros(rows.stop - rows.start, dtype=np.min_scalar_type(len(offsets)))
    for shift in shifts:
        counts += is_wire.view(np.uint8)[rows.start + shift : rows.stop + shift]
    core = np.zeros_like(wire)
    core.ravel()[rows] = is_wire[rows] & (counts >= min_samples)

    # Core clusters. ndimage.label joins the stencil offsets within 3x3 (8-connectivity for eps >= sqrt 2,
    # 4-connectivity for 1 <= eps < sqrt 2, none for eps < 1); only the longer offsets are left to check.
    near = np.abs(offsets).max(axis=1) <= 1
    structure = np.zeros((3, 3), dtype=bool)
    structure[offsets[near, 0] + 1, offsets[near, 1] + 1] = True
    components, n_components = ndimage.label(core, structure=structure)
    components = components.ravel()
    cluster = _cluster_lookup(components, core.ravel(), n_components, shifts[~near & (shifts > 0)])
    no_cluster = cluster[0]

    pixels = np.flatnonzero(is_wire)  # the row-major order of np.nonzero(mask)
    labels = cluster[components[pixels]]
    # A non-core pixel takes the lowest cluster number among the cores within eps (a border point), or none.
    others = np.flatnonzero(labels == no_cluster)
    if len(others):
        at = pixels[others]
        nearest = np.full(len(others), no_cluster)
        for shift in shifts:
            np.minimum(nearest, cluster[components[at + shift]], out=nearest)
        labels[others] = nearest
    labels[labels == no_cluster] = NOISE
    return labels


def cluster_extents(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per cluster (row span, column span) = (max - min) of its pixel coordinates; shape (n_clusters, 2)."""
    rows, cols = np.nonzero(mask)
    keep = labels >= 0
    rows, cols, labels = rows[keep], cols[keep], labels[keep]
    if len(labels) == 0:
        return np.empty((0, 2), dtype=np.int64)
    index = np.arange(labels.max() + 1)
    row_span = ndimage.maximum(rows, labels, index) - ndimage.minimum(rows, labels, index)
    col_span = ndimage.maximum(cols, labels, index) - ndimage.minimum(cols, labels, index)
    return np.stack([np.asarray(row_span), np.asarray(col_span)], axis=1).astype(np.int64)


def percolates(mask: np.ndarray, eps: float = 2.0, min_samples: int = 2, method: str = "fast") -> bool:
    """Whether a nanowire mask percolates, by the rule of Lu et al. (arXiv 2203.13875).

    Wire pixels are clustered with DBSCAN (eps, min_samples); the image is percolated when ONE cluster
    spans at least size - 2 pixels in both directions, i.e. for an H x W mask
    (max_col - min_col) >= W - 2 and (max_row - min_row) >= H - 2 for the same cluster.
    `method` is "fast" (`wire_clusters`) or "dbscan" (the scikit-learn reference); both give the same answer.
    """
    if method == "fast":
        labels = wire_clusters(mask, eps, min_samples)
    elif method == "dbscan":
        labels = wire_clusters_dbscan(mask, eps, min_samples)
    else:
        raise ValueError(f"unknown percolation method '{method}' (choose 'fast' or 'dbscan')")
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    spans = cluster_extents(mask, labels)
    spanning = (spans[:, 0] >= height - 2) & (spans[:, 1] >= width - 2)
    return bool(spanning.any())
