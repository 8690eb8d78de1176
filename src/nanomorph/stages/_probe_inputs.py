"""What the probe, anchors and advisor stages share: the validated nanowire images with their labels and split
rule, and the features of every configured encoder at `probe.feature_size` px.

Learned encoders' features live in the probe stage's content-keyed cache (data/features): the probe stage
extracts them on a miss, the anchors and advisor stages only read them (a miss there means the probe stage has
not run on these images and encoders, and is an error, not a silent re-extraction into another stage's output).
The classical features are computed by each stage: they cost seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nanomorph.config import Config
from nanomorph.data.io import load_image_stack
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import resolve_encoder
from nanomorph.models.precision import best_device
from nanomorph.probe.cache import CacheEntry, FeatureCache, image_set_fingerprint
from nanomorph.probe.classical import NAME as CLASSICAL
from nanomorph.probe.classical import classical_features
from nanomorph.probe.splits import SplitRule, split_rule

FEATURE_DIR = Path("data/features")
FeatureSets = dict[tuple[str, int], np.ndarray]


@dataclass(frozen=True)
class ProbeData:
    rows: pd.DataFrame   # the manifest's accepted nanowire rows, in manifest order
    labels: np.ndarray   # their class names
    rule: SplitRule      # the data's own train/test split, else seeded stratified splits
    image_set: str       # content fingerprint of the images (a feature cache key part)


def probe_data(cfg: Config) -> ProbeData:
    rows = accepted(cfg.validate.manifest, "nanowire")
    if rows.empty:
        raise NanomorphError(f"{cfg.validate.manifest}: no usable nanowire images")
    return ProbeData(rows, rows["label"].to_numpy(dtype=str),
                     split_rule(rows, cfg.probe.test_fraction, cfg.validate.manifest),
                     image_set_fingerprint(rows["sha256"].astype(str).tolist()))


def feature_sets(cfg: Config, data: ProbeData, *, extract: bool,
                 progress: bool = False) -> tuple[FeatureSets, list[CacheEntry]]:
    """{(encoder, encoder_seed): features} of every `probe.encoders` entry and the cache entries of the learned
    ones. `extract`: compute and store what the cache lacks (the probe stage); otherwise a miss is an error."""
    pr, pt = cfg.probe, cfg.pretrain
    load_images: Callable[[], np.ndarray] = functools.cache(
        lambda: load_image_stack([Path(p) for p in data.rows["path"]], pr.feature_size))
    cache, device, n_images = FeatureCache(FEATURE_DIR), best_device(), len(data.rows)
    sets: FeatureSets = {}
    entries: list[CacheEntry] = []
    for name in pr.encoders:
        if name == CLASSICAL:
            sets[(name, pt.seed)] = classical_features(load_images(), min_size=cfg.segment.object_min_size)
            continue
        encoder = resolve_encoder(name, pt.arch, pt.seed)
        with torch.no_grad():
            if extract:
                features, entry = cache.get_or_extract(name, pt.seed, encoder, pr.feature_size, data.image_set,
                                                       n_images, load_images, device=device, progress=progress,
                                                       stages=pr.feature_stages, dihedral=pr.feature_dihedral)
                entries.append(entry)
            else:
                features = cache.stored(name, pt.seed, encoder, pr.feature_size, data.image_set, n_images,
                                        device=device, stages=pr.feature_stages, dihedral=pr.feature_dihedral)
                if features is None:
                    raise NanomorphError(f"{FEATURE_DIR}/ holds no features of encoder '{name}' for these images "
                                         "and settings: run the probe stage first (`dvc repro` does)")
        sets[(name, pt.seed)] = features
    return sets, entries
