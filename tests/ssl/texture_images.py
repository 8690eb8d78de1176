"""Test images for the pretraining tests: structured, seeded, tiny."""

import numpy as np


def textures(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random oriented gratings plus noise: images with structure for the views to crop and jitter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    freq, angle, phase = rng.uniform(2, 8, n), rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
    waves = np.sin(2 * np.pi * freq[:, None, None] * (np.cos(angle)[:, None, None] * x
                                                     + np.sin(angle)[:, None, None] * y) + phase[:, None, None])
    return np.clip(0.5 + 0.3 * waves + 0.1 * rng.standard_normal((n, size, size)), 0, 1).astype(np.float32)
