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
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Interval
from pydantic import BeforeValidator, TypeAdapter, ValidationError

from nanomorph.data.archive import ArchiveLimits  # data.archive's own limits type: no copy to convert
from nanomorph.errors import ConfigError

PROFILES = ("micro", "cpu", "paper")

# Value constraints, checked by pydantic when params.yaml is loaded (`_validated`): a wrong type or range is
# one line naming the key, the value and what is allowed, before any stage touches its outputs.
Count = Annotated[int, Gt(0)]                   # >= 1
NonNegative = Annotated[int, Ge(0)]
Positive = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Interval(ge=0, le=1)]
OpenFraction = Annotated[float, Interval(gt=0, lt=1)]  # a split share: neither nothing nor everything
Probability = Fraction
Arch = Literal["resnet10", "resnet18", "resnet34", "resnet50"]
Stage = Literal["layer1", "layer2", "layer3", "layer4"]
SslMethod = Literal["simclr", "barlow_twins"]


@dataclass(frozen=True)
class HttpConfig:
    retries: NonNegative
    backoff_s: NonNegativeFloat
    timeout_s: Positive


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
    record: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]  # YAML reads 6377141 as int
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
    link: Literal["copy", "hardlink"]
    image_suffixes: tuple[str, ...]
    mask_suffixes: tuple[str, ...]


_DATA_BLOCKS = {"http": HttpConfig, "archive": ArchiveLimits, "layout": LayoutConfig, "zenodo": ZenodoConfig,
                "cem500k": Cem500kConfig, "folder": FolderConfig}


def _block(cls: type, value: Any, where: str) -> Any:
    """A nested params mapping (e.g. data.zenodo) as its frozen dataclass, with the same key checks as a section."""
    if isinstance(value, cls):
        return value
    _check_keys(cls, value, where)
    return _validated(cls, {k: _tuplify(v) for k, v in value.items()}, where)


def _check_keys(cls: type, value: Any, where: str) -> None:
    """A mapping with exactly the fields of dataclass `cls` (pydantic would drop unknown keys silently)."""
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping, got {_shown(value)}")
    fields = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    known = {f.name for f in dataclasses.fields(cls)}
    missing, unknown = fields - set(value), set(value) - known
    if missing:
        raise ConfigError(f"params.yaml: {where} lacks {sorted(missing)}")
    if unknown:
        raise ConfigError(f"params.yaml: {where} has unknown keys {sorted(unknown)}")


@dataclass(frozen=True)
class DataConfig:
    source: Literal["synthetic", "zenodo", "folder"]              # nanowire set
    generic_source: Literal["synthetic", "cem500k", "folder"]     # pretraining images
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
    images_per_class: Count
    image_size: Count
    generic_images: Count
    generic_size: Count

    def __post_init__(self) -> None:
        for name, cls in _DATA_BLOCKS.items():
            object.__setattr__(self, name, _block(cls, getattr(self, name), f"data.{name}"))
        # YAML reads an unquoted record id as a number; it names a record, so keep it as text.
        object.__setattr__(self, "zenodo", dataclasses.replace(self.zenodo, record=str(self.zenodo.record)))


@dataclass(frozen=True)
class ValidateConfig:
    min_side: Count
    max_side: Count
    max_pixels: Count
    min_std: NonNegativeFloat
    max_saturated_fraction: Fraction
    hash_size: Annotated[int, Ge(2)]
    near_duplicate_bits: NonNegative
    min_class_ratio: Fraction
    critical: tuple[str, ...]
    manifest: str
    quarantine: str
    docs_dir: str


@dataclass(frozen=True)
class PretrainConfig:
    methods: tuple[SslMethod, ...]
    images: Literal["generic", "task", "generic+task"]  # generic EM images and/or the task's own, unlabelled
    seed: NonNegative
    temperature: Positive
    lambd: NonNegativeFloat
    projector_dims: tuple[Count, ...]
    optimizer: Literal["sgd", "lars", "adamw"]
    lr: Positive
    momentum: Fraction
    weight_decay: NonNegativeFloat
    warmup_epochs: NonNegative
    crop_side: tuple[Annotated[float, Interval(gt=0, le=1)], Annotated[float, Interval(gt=0, le=1)]]
    flip_p: Probability
    jitter_p: Probability
    brightness: NonNegativeFloat
    contrast: NonNegativeFloat
    dihedral: bool             # views also get vertical flips and quarter turns (all 8 symmetries of the square)
    blur_p: Probability
    blur_sigma: Positive
    noise_std: NonNegativeFloat
    checkpoint_every: Count
    accumulate_steps: Count
    compile: bool
    cache_dir: str
    arch: Arch
    source_size: Count
    image_size: Count
    batch_size: Annotated[int, Ge(2)]  # contrastive losses need at least two images per batch
    epochs: Count
    cpu_bf16: bool = False     # bf16 autocast on CPUs that compute it natively (nanomorph.models.precision)


@dataclass(frozen=True)
class ProbeConfig:
    encoders: tuple[Literal["simclr", "barlow_twins", "random", "classical"], ...]
    solver: Literal["batched", "sklearn", "paper"]  # see nanomorph.probe.solvers
    test_fraction: OpenFraction
    C: Positive
    tol: Positive
    max_iter: Count
    paper_lr: Positive
    paper_batch_size: Count
    paper_epochs: Count
    knn_k: Count
    feature_size: Count
    feature_stages: tuple[Stage, ...]
    feature_dihedral: bool       # average features over the 8 rotations/flips of each image
    figure_n: Count
    advisor_budgets: tuple[Count, ...]
    advisor_kmeans_restarts: Count   # k-means++ initialisations per advisor proposal (scikit-learn's n_init)
    labels_per_class: tuple[Count, ...]
    split_seeds: Count
    anchor_probes: Count
    advisor_seeds: Count
    advisor_random_draws: Count
    tsne_perplexity: Positive


@dataclass(frozen=True)
class SegmentConfig:
    encoders: tuple[Literal["simclr", "barlow_twins", "random"], ...]
    classical: tuple[Literal["otsu", "local"], ...]
    freeze_encoder: bool
    lr: Positive
    batch_size: Count
    test_fraction: OpenFraction
    validation_fraction: Annotated[float, Interval(ge=0, lt=1)]
    seed: NonNegative
    train_sizes: tuple[Count, ...]
    epochs: tuple[Count, ...]
    object_min_size: NonNegative
    image_size: Count
    epoch_scale: Positive
    seeds: Count
    steps: Count | None = None   # fixed optimiser steps per run (any n); None: the paper's epochs_for(n)
    crop_size: Count | None = None  # train on random windows of this side (native resolution); None: whole images
    encoder_lr: Positive | None = None  # with freeze_encoder false: the encoder's own lr (BatchNorm kept fixed)
    dihedral: bool = False       # predict as the mean over the 8 rotations/flips of each image
    loss: Literal["dice", "dice+bce"] = "dice"  # nanomorph.segment.train.segmentation_loss
    cpu_bf16: bool = False       # U-Net training and prediction in bf16 autocast on a native-bf16 CPU
    balanced_subsets: bool = False  # training sets spread over the classes (segment.sweep)
    predict_cpu_bf16: bool = False  # the sweep's predictions (only) in bf16 autocast on a native-bf16 CPU

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
    probe_report_n: Count


@dataclass(frozen=True)
class RegistryConfig:
    classifier: str
    segmenter: str
    eval_fraction: OpenFraction
    eval_seed: NonNegative
    margin: NonNegativeFloat
    beat_classical: bool
    cv_folds: Annotated[int, Ge(2)]
    seed: NonNegative


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


_SECTIONS = {"data": DataConfig, "validate": ValidateConfig, "pretrain": PretrainConfig, "probe": ProbeConfig,
             "segment": SegmentConfig, "report": ReportConfig, "registry": RegistryConfig,
             "tracking": TrackingConfig}


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
    if cls is DataConfig:
        for block, block_cls in _DATA_BLOCKS.items():
            _check_keys(block_cls, section[block], f"data.{block}")
    return _validated(cls, {k: _tuplify(v) for k, v in section.items()}, name)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validated(cls: type, values: dict[str, Any], section: str) -> Any:
    """`cls(**values)` after pydantic has checked every field's type, range and allowed values.

    All problems of the section at once, one line each: `params.yaml: <section>.<key> = <value>: <what is
    allowed>`. Numbers written as text that read as numbers (YAML takes `1e-3` for a string) are accepted.
    """
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            key = section + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
            lines.append(f"params.yaml: {key} = {_shown(error['input'])}: {error['msg'].lower()}")
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


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
    sections, problems = {}, []
    for name, cls in _SECTIONS.items():  # every section's problems at once, not only the first section's
        try:
            sections[name] = _section(raw, name, cls, profile)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(profile=profile, **sections, raw=raw)
