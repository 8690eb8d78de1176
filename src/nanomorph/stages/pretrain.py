"""Stage `pretrain`: self-supervised pretraining of one method (dvc runs it once per method via foreach).

Images (`pretrain.images`): the validated generic EM images of the manifest, the validated nanowire images of the
task itself (unlabelled: self-supervision reads no label), or both; or with `--images DIR` every image file anywhere under
DIR (png, jpg, jpeg, tif, tiff; 8/16-bit, gray or colour) -- a lab's own images -- where files that cannot be
decoded are reported by name and skipped. Either way they are decoded once into the content-keyed cache
(`pretrain.cache_dir`, nanomorph.data.cache) and memory-mapped on later runs.

Distributed: under torchrun (WORLD_SIZE > 1 in the environment) each process joins the process group from
the environment (nccl on CUDA, one GPU per local rank; gloo on CPU) and runs one DDP rank of the same
training (nanomorph.ssl.train); `batch_size` stays the global batch. Only rank 0 opens the MLflow run, shows
progress and writes the checkpoint, encoder and metric files.

    torchrun --nproc_per_node 4 -m nanomorph.stages.pretrain --method barlow_twins
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch
import torch.distributed as dist

import nanomorph.models
import nanomorph.ssl
from nanomorph.config import Config
from nanomorph.data.cache import CachedImages, cached_images
from nanomorph.data.layout import IMAGE_SUFFIXES, display_path, find_images
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import save_encoder
from nanomorph.models.precision import best_device
from nanomorph.ssl.checkpoints import CHECKPOINT_FORMAT
from nanomorph.ssl.train import pretrain, pretrain_arguments
from nanomorph.stages._common import stage_main, tracked, write_json, on_terminal

METHODS = ("simclr", "barlow_twins")


def encoder_path(method: str) -> Path:
    return Path("models/encoders") / f"{method}.pt"


def checkpoint_path(method: str) -> Path:
    return Path("models/checkpoints") / method / "last.pt"


@dataclass(frozen=True)
class Process:
    """This process's place in the (possibly one-process) job and the device it trains on."""

    rank: int
    local_rank: int
    world: int
    device: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            on_gpu = self.device.startswith("cuda")
            dist.barrier(device_ids=[self.local_rank] if on_gpu else None)


@contextlib.contextmanager
def distributed_process() -> Iterator[Process]:
    """Join torchrun's process group when WORLD_SIZE > 1 (rendezvous from MASTER_ADDR/PORT, RANK, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Process(0, 0, 1, best_device())
        return
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    joined_here = not dist.is_initialized()
    if joined_here:
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Process(dist.get_rank(), local_rank, dist.get_world_size(), f"cuda:{local_rank}" if cuda else "cpu")
    finally:
        if joined_here:
            dist.destroy_process_group()


# pretrain keys that do not change what is trained: a new value must not cost a run its resume point
_NOT_TRAINING_KEYS = ("methods", "checkpoint_every", "compile", "cache_dir")
# the packages whose code decides what a pretraining run trains (the loop, the losses, the views, the models)
TRAINING_CODE = (Path(nanomorph.ssl.__file__).parent, Path(nanomorph.models.__file__).parent)


def training_code_digest(roots: tuple[Path, ...] = TRAINING_CODE) -> str:
    """sha256 (16 hex digits) of every .py file under `roots` (paths and contents), by default the training loop
    and the models (nanomorph.ssl, nanomorph.models)."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def training_fingerprint(cfg: Config, method: str, data_key: str, world: int, code: str | None = None) -> str:
    """What shapes a pretraining run: the pretrain section (less `_NOT_TRAINING_KEYS`), the method, the image
    set (its cache key, a hash of the decoded images), the world size (it fixes the BatchNorm groups), the
    checkpoint format and the training code (`code`, default `training_code_digest()`). Edits elsewhere in
    params.yaml (another stage's section, a comment) leave it unchanged.

    The code is in it because dvc re-runs this stage when the code changes: a checkpoint of the old code, above
    all a finished one, would otherwise be resumed, and the stage would hand on the old code's encoder and history
    as the new code's."""
    shaping = {k: v for k, v in cfg.section_params("pretrain").items() if k not in _NOT_TRAINING_KEYS}
    text = json.dumps({"pretrain": shaping, "method": method, "images": data_key, "world": world,
                       "format": CHECKPOINT_FORMAT, "code": training_code_digest() if code is None else code},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def set_aside_other_run(ckpt: Path, fingerprint: str) -> Path | None:
    """Keep `ckpt` for resuming when it was written under `fingerprint`; otherwise move it (never delete it)
    to `<name>.other-run.pt` (`.other-run-2.pt`, ... when an unfinished run left one there) and return that path,
    for the caller to delete once the new run has finished.

    The stamp beside the checkpoint records the fingerprint it belongs to."""
    stamp = ckpt.with_name("params_hash.json")
    aside = None
    if ckpt.exists() and (not stamp.exists() or json.loads(stamp.read_text()).get("params_hash") != fingerprint):
        aside, k = ckpt.with_name(f"{ckpt.stem}.other-run{ckpt.suffix}"), 1
        while aside.exists():  # an earlier run's, set aside by a run that did not finish: never replace it
            k += 1
            aside = ckpt.with_name(f"{ckpt.stem}.other-run-{k}{ckpt.suffix}")
        os.replace(ckpt, aside)
        print(f"{ckpt}: written under other training parameters or code; kept as {aside} until this run finishes",
              file=sys.stderr)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"params_hash": fingerprint}))
    return aside


def _image_files(cfg: Config, folder: Path | None) -> list[Path]:
    if folder is not None:
        paths = find_images(folder)
        if not paths:
            raise NanomorphError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) anywhere under it")
        return paths
    sources = cfg.pretrain.images.split("+")
    paths = [Path(x) for x in accepted(cfg.validate.manifest, "generic")["path"]] if "generic" in sources else []
    if "task" in sources:
        # The task's own images, unlabelled (no label or mask is read): what a lab would pretrain on too.
        paths += [Path(x) for x in accepted(cfg.validate.manifest, "nanowire")["path"]]
    return paths


def load_pretraining_images(cfg: Config, folder: Path | None, process: Process) -> CachedImages:
    """The pretraining images at `pretrain.source_size` through the cache; a folder's unreadable files skipped.

    Local rank 0 of each node fills the cache first and the node's other ranks then read its entry, so a
    set is decoded once per node. Manifest images passed validation, so an unreadable one there is an error.
    """
    paths = _image_files(cfg, folder)
    if process.local_rank != 0:
        process.barrier()
    data = cached_images(paths, cfg.pretrain.source_size, cfg.pretrain.cache_dir, skip_unreadable=folder is not None)
    if process.local_rank == 0:
        process.barrier()
    if process.main and data.skipped:
        print(f"skipped {len(data.skipped)} of {len(paths)} image files that could not be decoded:", file=sys.stderr)
        for path, reason in data.skipped:
            print(f"  {display_path(path)}: {reason}", file=sys.stderr)  # names not UTF-8: %XX
    if len(data.images) < 2:
        source = folder if folder is not None else cfg.validate.manifest
        raise NanomorphError(f"{source}: fewer than 2 usable pretraining images ({len(data.images)})")
    return data


def run_pretrain(cfg: Config, args: argparse.Namespace) -> None:
    method, p = args.method, cfg.pretrain
    if method not in METHODS:
        raise NanomorphError(f"unknown pretraining method '{method}' (choose from {', '.join(METHODS)})")
    with distributed_process() as process:
        data = load_pretraining_images(cfg, args.images, process)
        ckpt, other_run = checkpoint_path(method), None
        if process.main:
            # (params.yaml was validated when it was loaded, so a typo never gets here to move a checkpoint)
            other_run = set_aside_other_run(ckpt, training_fingerprint(cfg, method, data.key, process.world))
        process.barrier()
        with tracked(cfg, f"pretrain-{method}", ("pretrain",)) if process.main else contextlib.nullcontext():
            if process.main:
                mlflow.set_tag("nanomorph.method", method)
                mlflow.log_params({"n_images": len(data.images), "n_skipped_files": len(data.skipped),
                                   "image_source": display_path(args.images) if args.images else "manifest",
                                   "image_cache_key": data.key, "world_size": process.world})
            # pretrain_arguments: the section -> keywords mapping nanomorph.api.pretrain shares
            result = pretrain(
                data.images, **pretrain_arguments(p, method), checkpoint_path=ckpt, device=process.device,
                log_fn=(lambda metrics, step: mlflow.log_metrics(metrics, step=step)) if process.main else None,
                progress=process.main and on_terminal(),
            )
            if process.main:
                _write_outputs(method, p.image_size, p.epochs, cfg.params_hash, data, result)
                if other_run is not None:
                    other_run.unlink(missing_ok=True)


def _write_outputs(method: str, image_size: int, epochs: int, params_hash: str, data: CachedImages,
                   result) -> None:
    path = save_encoder(encoder_path(method), result.encoder, {
        "method": method, "image_size": image_size, "epochs": epochs, "n_images": len(data.images),
        "params_hash": params_hash, "image_cache_key": data.key,
    })
    mlflow.log_artifact(str(path), artifact_path="encoder")
    history_path = Path("metrics") / f"pretrain_{method}_history.csv"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.history).to_csv(history_path, index=False)
    mlflow.log_artifact(str(history_path))
    if data.skipped:
        mlflow.log_text("".join(f"{display_path(path)}\t{reason}\n" for path, reason in data.skipped),
                        "skipped_images.tsv")
    last = result.history[-1]
    write_json(Path("metrics") / f"pretrain_{method}.json", {
        **{k: float(last[k]) for k in ("loss", "embedding_std", "effective_rank") if k in last},
        "n_images": len(data.images), "n_skipped_files": len(data.skipped),
    })
    stats = ", ".join(f"{k.replace('_', ' ')} {float(last[k]):.3g}" for k in ("loss", "embedding_std", "effective_rank")
                      if k in last)
    print(f"pretrain {method}: {epochs} epochs on {len(data.images)} images at {image_size} px; last epoch {stats}; "
          f"encoder {path}")


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="pretrain on every image file under DIR instead of the manifest's generic images "
                             "(undecodable files are reported and skipped)")


def main(argv: list[str] | None = None) -> int:
    return stage_main("pretrain", run_pretrain, _add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
