"""params.yaml -> typed, frozen config objects.

Each section of params.yaml has shared keys plus a `scale:` block with one entry per profile
(micro, cpu, paper). The top-level `profile` key picks the entry, which is merged over the shared keys.
Library code never reads params.yaml; stages build these objects and pass explicit arguments on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nanomorph.data.archive import ArchiveLimits  # data.archive's own limits type: no copy to convert
from nanomorph.errors import ConfigError

PROFILES = ("micro", "cpu", "paper")


@dataclass(frozen=True)
class HttpConfig:
    retries: int
    backoff_s: float
    timeout_s: float


@dataclass(frozen=True)
class LayoutConfig:
    """How class folders, masks and splits are recognised in zenodo and folder source trees."""

    mask_markers: tuple[str, ...]
    mask_dirs: tuple[str, ...]
    image_dirs: tuple[str, ...]
    split_dirs: tuple[str, ...]
    class_aliases: dict[str, str]


@dataclass(frozen=True)
class ZenodoConfig:
    api_url: str
    record: str
    files: tuple[str, ...]
    image_suffixes: tuple[str, ...]
    mask_suffixes: tuple[str, ...]


@dataclass(frozen=True)
class Cem500kConfig:
    url: str | None
    checksum: str | None


@dataclass(frozen=True)
class FolderConfig:
    nanowire_root: str | None
    nanowire_manifest: str | None
    generic_root: str | None
    link: str
    image_suffixes: tuple[str, ...]
    mask_suffixes: tuple[str, ...]


_DATA_BLOCKS = {"http": HttpConfig, "archive": ArchiveLimits, "layout": LayoutConfig, "zenodo": ZenodoConfig,
                "cem500k": Cem500kConfig, "folder": FolderConfig}


def _block(cls: type, value: Any, where: str) -> Any:
    """A nested params mapping (e.g. data.zenodo) as its frozen dataclass, with the same key checks as a section."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping, got {value!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = fields - set(value), set(value) - fields
    if missing:
        raise ConfigError(f"params.yaml: {where} lacks {sorted(missing)}")
    if unknown:
        raise ConfigError(f"params.yaml: {where} has unknown keys {sorted(unknown)}")
    return cls(**{k: _tuplify(v) for k, v in value.items()})


@dataclass(frozen=True)
class DataConfig:
    source: str                # nanowire set: synthetic | zenodo | folder
    generic_source: str        # pretraining images: synthetic | cem500k | folder
    nanowire_dir: str
    generic_dir: str
    download_dir: str
    classes: tuple[str, ...]
    seed: int
    http: HttpConfig
    archive: ArchiveLimits
    layout: LayoutConfig
    zenodo: ZenodoConfig
    cem500k: Cem500kConfig
    folder: FolderConfig
    images_per_class: int
    image_size: int
    generic_images: int
    generic_size: int

    def __post_init__(self) -> None:
        for name, cls in _DATA_BLOCKS.items():
            object.__setattr__(self, name, _block(cls, getattr(self, name), f"data.{name}"))
        # YAML reads an unquoted record id as a number; it names a record, so keep it as text.
        object.__setattr__(self, "zenodo", dataclasses.replace(self.zenodo, record=str(self.zenodo.record)))


@dataclass(frozen=True)
class ValidateConfig:
    min_side: int
    max_side: int
    max_pixels: int
    min_std: float
    max_saturated_fraction: float
    hash_size: int
    near_duplicate_bits: int
    min_class_ratio: float
    critical: tuple[str, ...]
    manifest: str
    quarantine: str
    docs_dir: str


@dataclass(frozen=True)
class PretrainConfig:
    methods: tuple[str, ...]
    task_images: bool          # also pretrain on the task's own (unlabelled) nanowire images
    seed: int
    temperature: float
    lambd: float
    projector_dims: tuple[int, ...]
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    warmup_epochs: int
    crop_side: tuple[float, float]
    flip_p: float
    jitter_p: float
    brightness: float
    contrast: float
    dihedral: bool             # views also get vertical flips and quarter turns (all 8 symmetries of the square)
    blur_p: float
    blur_sigma: float
    noise_std: float
    checkpoint_every: int
    accumulate_steps: int
    compile: bool
    cache_dir: str
    arch: str
    source_size: int
    image_size: int
    batch_size: int
    epochs: int
    cpu_bf16: bool = False     # bf16 autocast on CPUs that compute it natively (nanomorph.models.precision)


@dataclass(frozen=True)
class ProbeConfig:
    encoders: tuple[str, ...]
    solver: str                  # batched | sklearn | paper (see nanomorph.probe.solvers)
    test_fraction: float
    C: float
    tol: float
    max_iter: int
    paper_lr: float
    paper_batch_size: int
    paper_epochs: int
    knn_k: int
    feature_size: int
    feature_stages: tuple[str, ...]
    feature_dihedral: bool       # average features over the 8 rotations/flips of each image
    figure_n: int
    advisor_budgets: tuple[int, ...]
    labels_per_class: tuple[int, ...]
    split_seeds: int
    anchor_probes: int
    advisor_seeds: int
    advisor_random_draws: int
    tsne_perplexity: float


@dataclass(frozen=True)
class SegmentConfig:
    encoders: tuple[str, ...]
    classical: tuple[str, ...]
    freeze_encoder: bool
    lr: float
    batch_size: int
    test_fraction: float
    validation_fraction: float
    seed: int
    train_sizes: tuple[int, ...]
    epochs: tuple[int, ...]
    object_min_size: int
    image_size: int
    epoch_scale: float
    seeds: int
    steps: int | None = None     # fixed optimiser steps per run (any n); None: the paper's epochs_for(n)
    crop_size: int | None = None  # train on random windows of this side (native resolution); None: whole images
    encoder_lr: float | None = None  # with freeze_encoder false: the encoder's own lr (BatchNorm kept fixed)
    dihedral: bool = False       # predict as the mean over the 8 rotations/flips of each image
    loss: str = "dice"           # dice | dice+bce (nanomorph.segment.train.segmentation_loss)
    cpu_bf16: bool = False       # U-Net training and prediction in bf16 autocast on a native-bf16 CPU

    def epochs_for(self, n: int) -> int:
        """Paper epochs for the nearest listed training-set size, scaled by the profile (at least 1)."""
        paper_sizes = (1, 2, 4, 8, 16, 32, 80)
        if len(self.epochs) != len(paper_sizes):
            raise ConfigError(f"segment.epochs needs {len(paper_sizes)} entries, one per size {paper_sizes}")
        nearest = min(range(len(paper_sizes)), key=lambda i: abs(paper_sizes[i] - n))
        return max(1, round(self.epochs[nearest] * self.epoch_scale))


@dataclass(frozen=True)
class ReportConfig:
    dir: str
    probe_report_n: int


@dataclass(frozen=True)
class RegistryConfig:
    classifier: str
    segmenter: str
    eval_fraction: float
    eval_seed: int
    margin: float
    beat_classical: bool
    cv_folds: int
    seed: int


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str
    tracking_uri: str
    artifact_dir: str


@dataclass(frozen=True)
class Config:
    profile: str
    data: DataConfig
    validate: ValidateConfig
    pretrain: PretrainConfig
    probe: ProbeConfig
    segment: SegmentConfig
    report: ReportConfig
    registry: RegistryConfig
    tracking: TrackingConfig
    raw: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)

    def section_params(self, name: str) -> dict[str, Any]:
        """The resolved section as a flat dict (for logging to MLflow)."""
        return dataclasses.asdict(getattr(self, name))

    @property
    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:16]


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def _section(raw: dict, name: str, cls: type, profile: str) -> Any:
    if name not in raw or not isinstance(raw[name], dict):
        raise ConfigError(f"params.yaml: missing section '{name}'")
    section = dict(raw[name])
    scale = section.pop("scale", None)
    if scale is not None:
        if profile not in scale:
            raise ConfigError(f"params.yaml: section '{name}' has no scale entry for profile '{profile}'")
        section.update(scale[profile])
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = fields - set(section)
    unknown = set(section) - fields
    if missing:
        raise ConfigError(f"params.yaml: section '{name}' lacks {sorted(missing)} (profile '{profile}')")
    if unknown:
        raise ConfigError(f"params.yaml: section '{name}' has unknown keys {sorted(unknown)}")
    return cls(**{k: _tuplify(v) for k, v in section.items()})


def load_config(path: str | Path = "params.yaml", profile: str | None = None) -> Config:
    """Read params.yaml and resolve it for `profile` (default: the file's own `profile` key)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such parameters file (run from the project root)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    profile = profile or raw.get("profile", "cpu")
    if profile not in PROFILES:
        raise ConfigError(f"{path}: unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
    return Config(
        profile=profile,
        data=_section(raw, "data", DataConfig, profile),
        validate=_section(raw, "validate", ValidateConfig, profile),
        pretrain=_section(raw, "pretrain", PretrainConfig, profile),
        probe=_section(raw, "probe", ProbeConfig, profile),
        segment=_section(raw, "segment", SegmentConfig, profile),
        report=_section(raw, "report", ReportConfig, profile),
        registry=_section(raw, "registry", RegistryConfig, profile),
        tracking=_section(raw, "tracking", TrackingConfig, profile),
        raw=raw,
    )
