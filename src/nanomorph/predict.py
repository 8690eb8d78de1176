"""`nanomorph predict`: classify and/or segment image files with registered models.

    nanomorph predict IMAGE_OR_FOLDER... [--model NAME@ALIAS] [--segmenter NAME@ALIAS|classical[...]] [--out DIR]

Folders are searched recursively for png/jpg/jpeg/tif/tiff files; files named on the command line are read
whatever their suffix. Without --model and --segmenter both champions are used; naming one uses only that
one. Writes DIR/predictions.csv (file, class, prob_<class>..., density, percolates, objects, overlay), one
overlay PNG per segmented image (the wire mask in red over the image at its own size, a legend strip under it)
under DIR/overlays, and DIR/skipped.csv listing every file that could not be used and why. A bad file never
stops the batch.

`--segmenter classical[:otsu|:local][:darker|:brighter]` segments with a classical threshold instead of a
registered model (nanomorph.segment.classical; default global Otsu, objects darker than the background as in
bright-field TEM; `local` is a Sauvola threshold with window 1/4 of the side and k 0.2), at each image's own
resolution, with the same small-object clean-up: the baseline every learned segmenter is compared with.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from nanomorph.analysis.density import pixel_density
from nanomorph.analysis.objects import count_objects
from nanomorph.analysis.percolation import percolates
from nanomorph.data.io import read_image
from nanomorph.data.layout import display_path, find_images
from nanomorph.data.validation import QualityRules, quality_problems
from nanomorph.errors import ImageReadError, NanomorphError, print_error
from nanomorph.segment.classical import CLASSICAL_SEGMENTERS, ClassicalSegmenter
from nanomorph.tracking.integrity import load_verified
from nanomorph.tracking.registry import ModelRef, parse_model_ref, resolve

DEFAULT_CLASSIFIER = "nanomorph-classifier@champion"
DEFAULT_SEGMENTER = "nanomorph-segmenter@champion"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
OVERLAY_RGB = np.array([1.0, 0.15, 0.1], dtype=np.float32)
OVERLAY_ALPHA = 0.45
CLASSICAL = "classical"
# Settings of `--segmenter classical:local`: Sauvola's customary k and a window of a quarter of the side.
LOCAL_DEFAULTS = {"window_fraction": 0.25, "k": 0.2}
OBJECT_MIN_SIZE = 4  # px, as params.yaml segment.object_min_size


class ClassicalSegmenterModel:
    """A classical segmenter behind the registered segmenter's predict interface (mask, density, percolates,
    objects per image), at each image's own resolution."""

    def __init__(self, segmenter: ClassicalSegmenter):
        self.segmenter = segmenter

    def predict(self, frame: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        rows = []
        for image in frame["image"]:
            mask = self.segmenter.predict(np.asarray(image, dtype=np.float64))
            rows.append({"mask": mask, "density": pixel_density(mask), "percolates": bool(percolates(mask)),
                         "objects": count_objects(mask, self.segmenter.min_size)})
        return pd.DataFrame(rows)


def classical_segmenter(spec: str) -> ClassicalSegmenterModel:
    """`classical[:otsu|:local][:darker|:brighter]` as a segmenter model (one-line error for anything else)."""
    parts = spec.split(":")[1:]
    method = next((p for p in parts if p in CLASSICAL_SEGMENTERS), "otsu")
    polarity = next((p for p in parts if p in ("darker", "brighter")), "darker")
    unknown = [p for p in parts if p not in (*CLASSICAL_SEGMENTERS, "darker", "brighter")]
    if unknown:
        raise NanomorphError(f"--segmenter {spec}: unknown part {unknown[0]!r} (use classical[:otsu|:local]"
                             "[:darker|:brighter])")
    settings = LOCAL_DEFAULTS if method == "local" else {}
    return ClassicalSegmenterModel(ClassicalSegmenter(method, polarity == "darker", min_size=OBJECT_MIN_SIZE,
                                                      **settings))


def collect_images(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (recursively); order kept, duplicates dropped."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(find_images(path))
        elif path.exists():
            found.append(path)
        else:
            raise NanomorphError(f"{display_path(path)}: no such file or folder")  # printable, like every name
    return list(dict.fromkeys(found))


SQLITE = "sqlite:///"


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


@dataclass(frozen=True)
class ProjectSettings:
    """What `params.yaml` says about the registry: where it is and what the models are called."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    classifier: str = DEFAULT_CLASSIFIER
    segmenter: str = DEFAULT_SEGMENTER


def project_settings(params: Path | None) -> ProjectSettings:
    """The registry settings of the project whose `params.yaml` is `params` (None: ./params.yaml if there is
    one, else the defaults). A relative sqlite store is relative to the project folder, not to the caller."""
    if params is None:
        params = Path("params.yaml")
        if not params.is_file():
            return ProjectSettings()
    elif not params.is_file():
        raise NanomorphError(f"{params}: no such params file")
    from nanomorph.config import load_config

    cfg = load_config(params)
    uri = cfg.tracking.tracking_uri
    db = _sqlite_file(uri)
    if db is not None and not db.is_absolute():
        uri = f"{SQLITE}{params.resolve().parent / db}"
    return ProjectSettings(uri, f"{cfg.registry.classifier}@champion", f"{cfg.registry.segmenter}@champion")


def tracking_uri(explicit: str | None, project: str = DEFAULT_TRACKING_URI) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the project's store (params.yaml `tracking.tracking_uri`);
    a missing sqlite file is an error (MLflow would otherwise create an empty store and report every model as
    absent)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or project
    db = _sqlite_file(uri)
    if db is not None:
        if not db.is_file():
            raise NanomorphError(f"no MLflow store at {uri} ({db} does not exist); run from the project root, "
                                 "set MLFLOW_TRACKING_URI or pass --tracking-uri")
    return uri


def registered_version(ref: ModelRef, uri: str):
    """(client of the registry at `uri`, the version `ref` names there); a one-line NanomorphError when absent."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    return client, resolve(client, ref, uri)


def load_registered(ref: ModelRef, uri: str):
    """The pyfunc model `ref` names in the registry at `uri`, loaded only after every file matched the sha256
    recorded at registration (a one-line NanomorphError when absent or changed)."""
    client, version = registered_version(ref, uri)
    return load_verified(client, ref.name, str(version.version)), version


def legend_height(width: int, height: int) -> int:
    """Rows of the legend strip under an overlay: ~4 % of the image's longer side, at least 14 (readable text)."""
    return max(14, round(0.04 * max(width, height)))


def overlay(image: np.ndarray, mask: np.ndarray, caption: str = "") -> np.ndarray:
    """uint8 RGB: the gray image at its own size with wire pixels tinted red (alpha blend), above a legend strip
    (`legend_height` rows) that shows the tint's swatch, "wire mask" and `caption` (e.g. the segmenter and density).

    Rows [:H] are exactly the tinted image, so the overlay can be compared pixel for pixel with the input."""
    from PIL import ImageDraw, ImageFont

    height, width = mask.shape
    rgb = np.repeat(np.clip(image, 0.0, 1.0)[..., None], 3, axis=2)
    rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * OVERLAY_RGB
    strip = legend_height(width, height)
    canvas = Image.new("RGB", (width, height + strip), "white")
    canvas.paste(Image.fromarray(np.round(rgb * 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    pad = max(2, strip // 6)
    swatch = tuple(int(round(255 * ((1 - OVERLAY_ALPHA) + OVERLAY_ALPHA * c))) for c in OVERLAY_RGB)  # on white
    draw.rectangle([pad, height + pad, pad + strip - 2 * pad, height + strip - pad], fill=swatch, outline="black")
    text = "wire mask" + (f" - {caption}" if caption else "")
    room = width - 3 * pad - strip
    size = max(6, strip - 2 * pad)
    font = ImageFont.load_default(size=size)
    if draw.textlength(text, font=font) > room:  # narrow image: smaller letters, never cut
        size = max(6, int(size * room / draw.textlength(text, font=font)))
        font = ImageFont.load_default(size=size)
    draw.text((2 * pad + strip, height + strip / 2), text, fill="black", font=font, anchor="lm")
    return np.asarray(canvas)


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}.png"
    used.add(name)
    return name


@dataclass
class PredictionRun:
    table: pd.DataFrame
    skipped: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)


# Only a file that cannot be decoded is a bad file; any other error is a bug and stops the run.
_PER_FILE_ERRORS: tuple[type[BaseException], ...] = (ImageReadError,)


def predict_files(files: list[Path], classifier: Any | None, segmenter: Any | None, out_dir: Path,
                  progress: bool = True, tiled: bool = False, quality: QualityRules = QualityRules()
                  ) -> PredictionRun:
    """Run the models on every file; write predictions.csv, skipped.csv and overlays into `out_dir`.

    A file that cannot be decoded, or whose image fails `quality` (too small, blank, saturated: the validate
    stage's checks), is skipped with its reason. File names are shown as printable UTF-8 everywhere (bytes
    that are not UTF-8 as %XX), so one odd name cannot stop the batch or its tables.
    `tiled`: the segmenter works at each image's own resolution by tiles instead of resizing it."""
    if classifier is None and segmenter is None:
        raise NanomorphError("nothing to do: no classifier and no segmenter")
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay_dir = out_dir / "overlays"
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    bar = tqdm(files, desc="predict", unit="image", disable=not progress)
    for path in bar:
        shown = display_path(path)
        try:
            image = read_image(path)
            problems = quality_problems(image, quality)
            if problems:
                skipped.append({"file": shown, "reason": "; ".join(problems)})
                tqdm.write(f"skipped {shown}: {skipped[-1]['reason']}", file=sys.stderr)
                continue
            frame = pd.DataFrame({"image": [image]})
            row: dict[str, Any] = {"file": shown}
            if classifier is not None:
                row.update(classifier.predict(frame).iloc[0].to_dict())
                if row.get("out_of_distribution"):
                    tqdm.write(f"warning {shown}: unlike every image the classifier was trained on (atypicality "
                               f"{row['atypicality']:.2f}); its class is unreliable", file=sys.stderr)
            if segmenter is not None:
                seg = segmenter.predict(frame, params={"tiled": True} if tiled else None).iloc[0]
                mask = np.asarray(seg["mask"], dtype=bool)
                row.update(density=float(seg["density"]), percolates=bool(seg["percolates"]),
                           objects=int(seg["objects"]))
                overlay_dir.mkdir(exist_ok=True)
                target = overlay_dir / _unique_name(display_path(path.stem), used)
                caption = (f"density {row['density']:.3f}, "
                           + ("percolates" if row["percolates"] else "does not percolate"))
                Image.fromarray(overlay(image, mask, caption)).save(target)
                row["overlay"] = display_path(target)
        except _PER_FILE_ERRORS as exc:
            skipped.append({"file": shown, "reason": exc.reason.splitlines()[0]})
            tqdm.write(f"skipped {shown}: {skipped[-1]['reason']}", file=sys.stderr)
            continue
        rows.append(row)
    table = pd.DataFrame(rows)
    # Probabilities and densities to 4 decimals: the models are not more accurate than that, and 17-digit
    # floats make the CSV unreadable. The in-memory PredictionRun keeps the rounded values too.
    fractions = [c for c in table.columns if c.startswith("prob_") or c == "density"]
    table[fractions] = table[fractions].round(4)
    if "atypicality" in table:
        table["atypicality"] = table["atypicality"].round(3)
    skipped_table = pd.DataFrame(skipped, columns=["file", "reason"])
    files_written = {"predictions": out_dir / "predictions.csv", "skipped": out_dir / "skipped.csv"}
    table.to_csv(files_written["predictions"], index=False)
    skipped_table.to_csv(files_written["skipped"], index=False)
    return PredictionRun(table, skipped_table, files_written)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nanomorph predict", description="Classify and/or segment images with registered models.",
        epilog="Without --model and --segmenter both champions are used; naming one uses only that one.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", default=None, metavar="NAME@ALIAS",
                        help="classifier: NAME@ALIAS, NAME/VERSION or NAME (= NAME@champion); default the "
                             f"project's registry.classifier@champion ({DEFAULT_CLASSIFIER} without a project)")
    parser.add_argument("--segmenter", default=None, metavar="NAME@ALIAS",
                        help="segmenter, same forms; default the project's registry.segmenter@champion; or "
                             "classical[:otsu|:local][:darker|:brighter] for the classical threshold baseline "
                             "(no model needed)")
    parser.add_argument("--out", default="predictions", type=Path, help="output folder (default: predictions)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's "
                             f"tracking.tracking_uri, else {DEFAULT_TRACKING_URI})")
    parser.add_argument("--params", default=None, type=Path,
                        help="the project's params.yaml, for its tracking URI and model names (default: "
                             "./params.yaml when there is one)")
    parser.add_argument("--tiled", action="store_true",
                        help="segment at each image's own resolution by overlapping tiles (large images whose "
                             "pixel size matches the training images') instead of resizing to the training size")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (there is one only when stderr is a terminal)")
    return parser


def run(args: argparse.Namespace) -> PredictionRun:
    project = project_settings(args.params)
    both_champions = args.model is None and args.segmenter is None
    if both_champions:
        args.model, args.segmenter = project.classifier, project.segmenter
    models = {}
    if args.segmenter is not None and args.segmenter.split(":")[0] == CLASSICAL:
        models["segmenter"] = classical_segmenter(args.segmenter)
        print(f"segmenter: {models['segmenter'].segmenter.describe()} (classical, no model)", file=sys.stderr)
    refs = {kind: parse_model_ref(text) for kind, text in (("classifier", args.model), ("segmenter", args.segmenter))
            if text is not None and kind not in models}
    files = collect_images(args.paths)
    if not files:
        raise NanomorphError(f"no image files (png, jpg, jpeg, tif, tiff) in {', '.join(map(str, args.paths))}")
    uri = tracking_uri(args.tracking_uri, project.tracking_uri) if refs else None
    for kind, ref in refs.items():
        try:
            models[kind], version = load_registered(ref, uri)
        except NanomorphError as exc:
            if not both_champions:
                raise
            # e.g. the register stage recommended no classifier because none beat the classical baseline
            other = (f"--segmenter {args.segmenter}" if kind == "classifier" else f"--model {args.model}")
            raise NanomorphError(f"{exc}; without --model and --segmenter both champions are used: name one "
                                 f"({other}) to use it alone") from exc
        print(f"{kind}: {ref} (version {version.version})", file=sys.stderr)
    result = predict_files(files, models.get("classifier"), models.get("segmenter"), args.out,
                           progress=not args.no_progress and sys.stderr.isatty(), tiled=args.tiled)
    print(f"{len(result.table)} of {len(files)} images predicted -> {result.files['predictions']}"
          + (f"; {len(result.skipped)} skipped -> {result.files['skipped']}" if len(result.skipped) else ""))
    if result.table.empty:
        raise NanomorphError(f"none of the {len(files)} files could be used (reasons in {result.files['skipped']})")
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except NanomorphError as exc:
        print_error("nanomorph predict: error", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
