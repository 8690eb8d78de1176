"""Percolation of nanowire masks, after Lu et al. (arXiv 2203.13875).

The paper groups wire pixels into clusters with DBSCAN on their (row, col) coordinates and calls an image
percolated when a single cluster stretches (almost) across the whole field of view in both directions.

`wire_clusters_dbscan` is that reference, run through scikit-learn. `wire_clusters` returns the very same
labels much faster by using the fact that the points lie on a pixel grid: "within eps" becomes a fixed
stencil of pixel offsets, so neighbour counts are one correlation, core clusters are connected components
of a sparse graph, and border points are one minimum filter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

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


def _footprint(offsets: np.ndarray) -> np.ndarray:
    reach = int(np.abs(offsets).max())
    footprint = np.zeros((2 * reach + 1, 2 * reach + 1), dtype=bool)
    footprint[offsets[:, 0] + reach, offsets[:, 1] + reach] = True
    return footprint


def _core_components(core: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Label image of core pixels (-1 elsewhere): connected components under the eps-neighbourhood.

    Components are numbered in the order of their first pixel in row-major order, which is the order in
    which scikit-learn's DBSCAN discovers its clusters, so the labels match it exactly, not just up to a
    permutation.
    """
    height, width = core.shape
    index = np.full(core.shape, -1, dtype=np.int64)
    rows, cols = np.nonzero(core)
    n_core = len(rows)
    index[rows, cols] = np.arange(n_core)
    sources, targets = [], []
    # Half of the symmetric stencil suffices: the graph is undirected.
    for dr, dc in offsets:
        if (dr, dc) <= (0, 0):
            continue
        r2, c2 = rows + dr, cols + dc
        on_grid = (r2 >= 0) & (r2 < height) & (c2 >= 0) & (c2 < width)
        neighbour = np.full(n_core, -1, dtype=np.int64)
        neighbour[on_grid] = index[r2[on_grid], c2[on_grid]]
        linked = neighbour >= 0
        sources.append(np.nonzero(linked)[0])
        targets.append(neighbour[linked])
    sources_all = np.concatenate(sources) if sources else np.empty(0, dtype=np.int64)
    targets_all = np.concatenate(targets) if targets else np.empty(0, dtype=np.int64)
    graph = coo_matrix(
        (np.ones(len(sources_all), dtype=np.int8), (sources_all, targets_all)), shape=(n_core, n_core)
    ).tocsr()
    _, component = connected_components(graph, directed=False)
    # Renumber components by first appearance (= smallest core index).
    _, first = np.unique(component, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    label_image = np.full(core.shape, -1, dtype=np.int64)
    label_image[rows, cols] = rank[component]
    return label_image


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
    footprint = _footprint(offsets)
    counts = ndimage.correlate(mask.astype(np.int32), footprint.astype(np.int32), mode="constant", cval=0)
    core = mask & (counts >= min_samples)
    labels = np.full(mask.shape, NOISE, dtype=np.int64)
    if core.any():
        core_labels = _core_components(core, offsets)
        # One past the last cluster number marks "no core within eps". (A huge sentinel such as the int64
        # maximum does not survive ndimage's cval, which passes through a double.)
        unreachable = int(core_labels.max()) + 1
        # Lowest cluster number among the cores within eps of each pixel.
        nearest_cluster = ndimage.minimum_filter(
            np.where(core, core_labels, unreachable), footprint=footprint, mode="constant", cval=unreachable
        )
        border = mask & ~core & (nearest_cluster != unreachable)
        labels[core] = core_labels[core]
        labels[border] = nearest_cluster[border]
    return labels[mask].astype(np.intp)


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
