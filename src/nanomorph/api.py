"""nanomorph from Python: the pipeline's steps as a few calls on images in memory, set up by params.yaml.

    import nanomorph as nm

    cfg = nm.load_config("params.yaml", profile="cpu")
    encoder = nm.pretrain(unlabelled_images, cfg, method="simclr")
    features = nm.extract_features(encoder, labelled_images, cfg)
    table = nm.probe_sweep({"simclr": features}, labels, cfg)    # one row per probe: accuracy per split and n
    unet = nm.train_segmenter(encoder, seg_images, seg_masks, cfg, n=4)
    masks = nm.predict_masks(unet, new_images, cfg)

Every call takes the whole `Config` (from `load_config`) or its own section (`cfg.pretrain`, `cfg.probe`,
`cfg.segment`; `dataclasses.replace` makes a variant) and reads every setting the matching dvc stage reads, through
the very mapping the stage uses (`ssl.train.pretrain_arguments`, `probe.sweep.sweep_arguments`,
`serving.train.unet_arguments`), so a notebook trains and scores what the pipeline does: `pretrain` on the stage's
images gives the stage's encoder, weight for weight (tests/test_api.py).

Images: an (N, H, W) float array in [0, 1], or image files (a list of paths, or a folder: every image file under
it), read and resized to the section's size as the stages read them (`nanomorph.data.io.load_image_stack`:
`pretrain.source_size`, `probe.feature_size`, `segment.image_size`). Masks: an (N, H, W) bool array or mask files
(`load_mask_stack`). `device=None` is CUDA when present, else the CPU (the stages' choice).

This module imports only the config at import time (torch and the rest load on the first call), so
`import nanomorph` stays instant; `nanomorph.<name>` re-exports every name in `__all__`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nanomorph.config import Config, PretrainConfig, ProbeConfig, SegmentConfig
from nanomorph.config import load_config as _load_config

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import segmentation_models_pytorch as smp

    from nanomorph.models.encoder import ResNetEncoder
    from nanomorph.probe.splits import SplitRule
    from nanomorph.ssl.train import LogFn

    Images = np.ndarray | Sequence[str | os.PathLike] | str | os.PathLike  # pixels, image files or a folder

__all__ = ["load_config", "pretrain", "load_encoder", "save_encoder", "extract_features", "probe_sweep",
           "train_segmenter", "predict_masks"]

def load_config(params: str | os.PathLike = "params.yaml", profile: str | None = None) -> Config:
    """The project's params.yaml resolved for `profile` ("micro", "cpu" or "paper"; None: the file's own
    `profile` key), validated, as frozen dataclasses: `cfg.pretrain`, `cfg.probe`, `cfg.segment`, ...

    The package ships no copy of params.yaml: give the path of a project's file (the default, "params.yaml",
    is the one in the current directory, e.g. a notebook started in the project root). A missing file, an
    unknown profile or a wrong value raises nanomorph.errors.ConfigError naming it.
    """
    return _load_config(params, profile)


def _section(cfg: Any, cls: type, name: str) -> Any:
    if isinstance(cfg, Config):
        return getattr(cfg, name)
    if isinstance(cfg, cls):
        return cfg
    raise TypeError(f"expected a Config (nanomorph.load_config) or its `{name}` section ({cls.__name__}), "
                    f"got {type(cfg).__name__}")


def _device(device: Any) -> Any:
    if device is not None:
        return device
    from nanomorph.models.precision import best_device  # imported here: torch loads on first use

    return best_device()


def _paths(source: Any) -> list[Path] | None:
    """Image files named by `source` (a folder or a list of paths), None when `source` holds pixels."""
    if isinstance(source, str | os.PathLike):
        from nanomorph.data.layout import find_images

        path = Path(source)
        return find_images(path) if path.is_dir() else [path]
    if isinstance(source, list | tuple) and source and all(isinstance(p, str | os.PathLike) for p in source):
        return [Path(p) for p in source]
    return None


def _images(source: Any, size: int | None, what: str = "images") -> np.ndarray:
    import numpy as np

    paths = _paths(source)
    if paths is None:
        return np.asarray(source)
    if size is None:
        raise ValueError(f"{what} given as files: pass a config, whose section sets the size to read them at")
    from nanomorph.data.io import load_image_stack

    return load_image_stack(paths, size)


def _masks(source: Any, size: int) -> np.ndarray:
    import numpy as np

    paths = _paths(source)
    if paths is None:
        return np.asarray(source)
    from nanomorph.data.io import load_mask_stack

    return load_mask_stack(paths, size)


def _encoder(encoder: Any) -> ResNetEncoder:
    if isinstance(encoder, str | os.PathLike):
        return load_encoder(encoder)[0]
    return encoder


def pretrain(images: Images, cfg: Config | PretrainConfig, *, method: str = "simclr", seed: int | None = None,
             checkpoint: str | os.PathLike | None = None, device: Any = None, progress: bool = False,
             log_fn: LogFn | None = None) -> ResNetEncoder:
    """Self-supervised pretraining (SimCLR or Barlow Twins) of a ResNet encoder on unlabelled images, with every
    setting of the `pretrain` section (arch, crop size `image_size`, batch, epochs, optimiser, augmentations, ...).

    `images`: (N, H, W) floats in [0, 1] or image files, read at `pretrain.source_size` as the stage reads them;
    at least 2. `method`: "simclr" or "barlow_twins". `seed`: overrides `pretrain.seed` (the initialisation,
    the shuffles and the views). `checkpoint`: a file written every `checkpoint_every` steps and at the end; a
    call that finds it resumes from it (and refuses one written under other settings); None: none written.
    `log_fn(metrics, step)` receives the per-step and per-epoch metrics (`nanomorph.ssl.train.pretrain`).

    Returns the trained encoder (ResNetEncoder, on the CPU, eval mode); `save_encoder` writes it where the probe
    and segment stages look (models/encoders/<method>.pt). Same images and settings: the pretrain stage's encoder.
    """
    from nanomorph.ssl.train import pretrain as _pretrain
    from nanomorph.ssl.train import pretrain_arguments

    section = _section(cfg, PretrainConfig, "pretrain")
    arguments = pretrain_arguments(section, method)
    if seed is not None:
        arguments["seed"] = int(seed)
    data = _images(images, section.source_size)
    result = _pretrain(data, **arguments, checkpoint_path=None if checkpoint is None else Path(checkpoint),
                       device=_device(device), log_fn=log_fn, progress=progress)
    return result.encoder


def load_encoder(path: str | os.PathLike) -> tuple[ResNetEncoder, dict[str, Any]]:
    """(encoder, meta) from a file written by `save_encoder` or the pretrain stage (models/encoders/<method>.pt);
    `nanomorph.models.encoder.load_encoder` (no pickled code is executed)."""
    from nanomorph.models.encoder import load_encoder as _load_encoder

    return _load_encoder(path)


def save_encoder(path: str | os.PathLike, encoder: ResNetEncoder, meta: Mapping[str, Any] | None = None) -> Path:
    """Write `encoder` (and a JSON-able `meta` dict) atomically to `path`, in the pretrain stage's format."""
    from nanomorph.models.encoder import save_encoder as _save_encoder

    return _save_encoder(path, encoder, dict(meta or {}))


def extract_features(encoder: ResNetEncoder | str | os.PathLike, images: Images,
                     cfg: Config | ProbeConfig | None = None, *, batch_size: int = 64, device: Any = None,
                     progress: bool = False) -> np.ndarray:
    """Frozen-encoder features (N, D) float32 of images, read out as the probe stage does: the pooled
    `probe.feature_stages` of the ResNet, averaged over the 8 rotations/flips when `probe.feature_dihedral`.

    `encoder`: a ResNetEncoder or the path of a saved one. `images`: (N, H, W) floats in [0, 1], or image files
    read at `probe.feature_size` (the stage's size; arrays are used at the size they have). Without `cfg`: the
    last stage's pooled output, no averaging (`nanomorph.probe.features.extract_features`'s defaults).
    """
    from nanomorph.probe.features import extract_features as _extract

    section = None if cfg is None else _section(cfg, ProbeConfig, "probe")
    data = _images(images, None if section is None else section.feature_size)
    readout = {} if section is None else {"stages": section.feature_stages, "dihedral": section.feature_dihedral}
    return _extract(_encoder(encoder), data, batch_size=batch_size, device=_device(device), progress=progress,
                    **readout)


def _feature_sets(features: Any, encoder_seed: int) -> dict[tuple[str, int], np.ndarray]:
    if not isinstance(features, Mapping):
        return {("encoder", encoder_seed): features}
    return {key if isinstance(key, tuple) else (str(key), encoder_seed): value for key, value in features.items()}


def probe_sweep(features: np.ndarray | Mapping[str, np.ndarray] | Mapping[tuple[str, int], np.ndarray],
                labels: Sequence[str] | np.ndarray, cfg: Config | ProbeConfig, *,
                test_fraction: float | SplitRule | None = None, sizes: Sequence[int] | None = None,
                split_seeds: int | Sequence[int] | None = None, classifiers: Sequence[str] = ("linear", "knn"),
                encoder_seed: int | None = None, progress: bool = False) -> pd.DataFrame:
    """The probe stage's label-budget sweep: for every split seed a stratified train/test split, then a linear
    softmax probe (and the k-NN baseline) on n labelled images per class of the train part, scored on the test part.

    `features`: one (N, D) array (reported as encoder "encoder"), or {name: array} to compare encoders on the
    very same splits; `labels`: the N class names. From the `probe` section: the budgets `labels_per_class`, the
    split seeds 0 .. `split_seeds`-1, `test_fraction`, the solver with its C, tol and max_iter, and `knn_k`; the
    keywords override the first three (`split_seeds`: a count or the seeds; `test_fraction` may be a
    nanomorph.probe.splits.SplitRule holding a given split). Budgets larger than the smallest class's train part
    are skipped with a warning. `encoder_seed` fills the column of that name (default: `pretrain.seed` with a
    whole Config, else 0).

    Returns the tidy table of metrics/probe_results.csv: one row per probe with encoder (`<name>+knn` for k-NN),
    classifier, encoder_seed, split_seed, n, accuracy, macro_f1 and recall_<class>;
    e.g. `table.groupby(["n", "encoder"]).accuracy.median()` is metrics/probe_summary.csv.
    """
    from nanomorph.probe import sweep

    section = _section(cfg, ProbeConfig, "probe")
    if encoder_seed is None:
        encoder_seed = cfg.pretrain.seed if isinstance(cfg, Config) else 0
    arguments = sweep.sweep_arguments(section)
    if sizes is not None:
        arguments["sizes"] = tuple(sizes)
    if split_seeds is not None:
        arguments["split_seeds"] = list(range(split_seeds)) if isinstance(split_seeds, int) else list(split_seeds)
    split = section.test_fraction if test_fraction is None else test_fraction
    result = sweep.probe_sweep(_feature_sets(features, int(encoder_seed)), labels, test_fraction=split,
                               classifiers=tuple(classifiers), progress=progress, **arguments)
    return result.table


def train_segmenter(encoder: ResNetEncoder | str | os.PathLike, images: Images, masks: Any,
                    cfg: Config | SegmentConfig, *, n: int | None = None, seed: int | None = None,
                    device: Any = None, progress: bool = False) -> smp.Unet:
    """A U-Net (segmentation-models-pytorch) whose encoder is `encoder`'s ResNet, trained on images and their
    wire masks with the `segment` section's recipe, as the register stage trains the deployed segmenter: frozen
    encoder (`freeze_encoder`), lr, batch size, loss, crop size, and `steps` optimiser steps or else
    `epochs_for(<training images>)` epochs.

    `images`/`masks`: (N, H, W) floats in [0, 1] / bools, or files read at `segment.image_size` (sides must be
    multiples of 32). `n`: train on n of them, a seeded draw (the segment sweep's plain draw,
    nanomorph.probe.splits.nested_subsets); None: all. `seed` (default `segment.seed`) drives the draw, the decoder
    initialisation, the shuffles and the flips. Returns the model on the CPU in eval mode; `predict_masks` applies it.
    """
    import numpy as np

    from nanomorph.probe.splits import nested_subsets
    from nanomorph.serving.train import train_unet, unet_arguments

    section = _section(cfg, SegmentConfig, "segment")
    seed = section.seed if seed is None else int(seed)
    model = _encoder(encoder)
    data = np.asarray(_images(images, section.image_size), dtype=np.float32)
    truth = _masks(masks, section.image_size)
    if len(data) != len(truth):
        raise ValueError(f"{len(data)} images but {len(truth)} masks")
    if n is not None:
        if not 1 <= n <= len(data):
            raise ValueError(f"n = {n}: choose 1 to {len(data)} (the number of images given)")
        chosen = nested_subsets(np.arange(len(data)), [n], seed)[n]
        data, truth = data[chosen], truth[chosen]
    return train_unet(model.resnet_state_dict(), data, truth, arch=model.arch, seed=seed, device=_device(device),
                      progress=progress, **unet_arguments(section, len(data)))


def predict_masks(model: smp.Unet, images: Images, cfg: Config | SegmentConfig | None = None, *,
                  threshold: float = 0.5, device: Any = None) -> np.ndarray:
    """Boolean (N, H, W) wire masks from a U-Net of `train_segmenter`, predicted as the segment stage scores its
    models: the mean over the 8 rotations/flips when `segment.dihedral`, bf16 when `segment.predict_cpu_bf16`
    (on a CPU that computes it natively). `images`: (N, H, W) floats in [0, 1] or files read at
    `segment.image_size`; sides must be multiples of 32. Without `cfg`: one plain float32 pass.
    """
    from nanomorph.segment.train import predict_masks as _predict

    section = None if cfg is None else _section(cfg, SegmentConfig, "segment")
    data = _images(images, None if section is None else section.image_size)
    if section is None:
        return _predict(model, data, device=_device(device), threshold=threshold)
    return _predict(model, data, batch_size=max(section.batch_size, 8), device=_device(device), threshold=threshold,
                    dihedral=section.dihedral, cpu_bf16=section.predict_cpu_bf16)
