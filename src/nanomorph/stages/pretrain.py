"""Stage `pretrain`: self-supervised pretraining of one method (dvc runs it once per method via foreach)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import mlflow
import pandas as pd

from nanomorph.config import Config
from nanomorph.data.io import load_image_stack
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import save_encoder
from nanomorph.ssl.train import pretrain
from nanomorph.stages._common import best_device, stage_main, tracked, write_json

METHODS = ("simclr", "barlow_twins")


def encoder_path(method: str) -> Path:
    return Path("models/encoders") / f"{method}.pt"


def checkpoint_path(method: str) -> Path:
    return Path("models/checkpoints") / method / "last.pt"


def _fresh_or_resumable(ckpt: Path, fingerprint: str) -> None:
    """Keep a checkpoint only if it was written under the same params; a killed run then resumes from it."""
    stamp = ckpt.with_name("params_hash.json")
    if ckpt.exists() and (not stamp.exists() or json.loads(stamp.read_text()).get("params_hash") != fingerprint):
        print(f"discarding checkpoint {ckpt}: written under other parameters", file=sys.stderr)
        ckpt.unlink()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"params_hash": fingerprint}))


def run_pretrain(cfg: Config, args: argparse.Namespace) -> None:
    method, p = args.method, cfg.pretrain
    if method not in METHODS:
        raise NanomorphError(f"unknown pretraining method '{method}' (choose from {', '.join(METHODS)})")
    generic = accepted(cfg.validate.manifest, "generic")
    if len(generic) < 2:
        raise NanomorphError(f"{cfg.validate.manifest}: fewer than 2 usable pretraining images")
    images = load_image_stack([Path(x) for x in generic["path"]], p.source_size)
    ckpt = checkpoint_path(method)
    _fresh_or_resumable(ckpt, f"{cfg.params_hash}:{method}")

    with tracked(cfg, f"pretrain-{method}", ("pretrain",)):
        mlflow.set_tag("nanomorph.method", method)
        mlflow.log_param("n_images", len(images))
        result = pretrain(
            images, method=method, arch=p.arch, image_size=p.image_size, batch_size=p.batch_size, epochs=p.epochs,
            optimizer=p.optimizer, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
            warmup_epochs=p.warmup_epochs,
            temperature=p.temperature, lambd=p.lambd, projector_dims=p.projector_dims, crop_side=p.crop_side,
            flip_p=p.flip_p, jitter_p=p.jitter_p, brightness=p.brightness, contrast=p.contrast, seed=p.seed,
            checkpoint_path=ckpt, checkpoint_every=p.checkpoint_every, device=best_device(),
            log_fn=lambda metrics, step: mlflow.log_metrics(metrics, step=step),
        )
        path = save_encoder(encoder_path(method), result.encoder, {
            "method": method, "image_size": p.image_size, "epochs": p.epochs, "n_images": len(images),
            "params_hash": cfg.params_hash,
        })
        mlflow.log_artifact(str(path), artifact_path="encoder")
        history = pd.DataFrame(result.history)
        history_path = Path("metrics") / f"pretrain_{method}_history.csv"
        history_path.parent.mkdir(parents=True, exist_ok=True)
        history.to_csv(history_path, index=False)
        mlflow.log_artifact(str(history_path))
        last = result.history[-1]
        write_json(Path("metrics") / f"pretrain_{method}.json", {
            k: float(last[k]) for k in ("loss", "embedding_std", "effective_rank", "images_per_s") if k in last
        })


def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=METHODS)


def main(argv: list[str] | None = None) -> int:
    return stage_main("pretrain", run_pretrain, _add_args, argv)


if __name__ == "__main__":
    sys.exit(main())
