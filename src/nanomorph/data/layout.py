"""Finding images on disk: the nanowire set's class folders and flat or nested image trees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nanomorph.errors import NanomorphError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image with its mask file (None when unlabelled) and its class name (None when unknown)."""

    image: Path
    mask: Path | None
    label: str | None


def _is_image(path: Path) -> bool:
    # Dot-files are editor/OS debris (e.g. macOS "._name.png" resource forks), never images.
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def find_nanowire_dataset(root: str | Path, classes: Sequence[str]) -> list[Sample]:
    """Samples of the nanowire set laid out as `root/<class>/images/<name>` + `root/<class>/labels/<stem>.png`.

    Classes come in the given order, images sorted by name within each; an image without a label file gets
    `mask=None`. A missing root, a missing class folder or a class without images is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise NanomorphError(f"{root}: nanowire dataset folder not found")
    samples = []
    for name in classes:
        image_dir = root / name / "images"
        if not image_dir.is_dir():
            raise NanomorphError(f"{image_dir}: missing image folder for class '{name}' (expected <root>/<class>/images/)")
        images = _images_in(image_dir)
        if not images:
            raise NanomorphError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) for class '{name}'")
        label_dir = root / name / "labels"
        for image in images:
            label = label_dir / f"{image.stem}.png"
            samples.append(Sample(image=image, mask=label if label.is_file() else None, label=name))
    return samples


def find_images(root: str | Path) -> list[Path]:
    """All image files (png, jpg, jpeg, tif, tiff; any case) anywhere under `root`, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise NanomorphError(f"{root}: image folder not found")
    return sorted(p for p in root.rglob("*") if _is_image(p))
