"""Stage `register`: train the deployable classifier and segmenter, log them as MLflow pyfunc models, register
them and decide which version is the champion.

* Data: the accepted labelled nanowire images are split ONCE, stratified by class, by
  (`registry.eval_fraction`, `registry.eval_seed`). The models are trained on all of the training part; the
  evaluation part is never trained on and scores every version (the segmenter uses the images that have masks).
* Classifier: the pretrained encoder (of `probe.encoders`; the random-init baseline is not a candidate) whose
  linear probe has the best mean accuracy in stratified `registry.cv_folds`-fold cross-validation on the
  TRAINING part -- not the probe study's test accuracies, whose test sets cover the evaluation images -- and a
  linear probe fitted on its features of every training image.
* Segmenter: U-Net with that encoder, trained on the training images' masks with the segment stage's recipe
  (lr, batch size, frozen encoder, epochs for the training-set size scaled by the profile).
* Classical baselines, on the same split: the linear probe on the classical features (nanomorph.probe.classical)
  fitted on the training part, and every classical segmenter (`segment.classical`) fitted on the training
  masks; both scored on the evaluation images like the learned models (segmenters at the images' own size).
* Recommendation: each new version is scored through its logged pyfunc model on the evaluation set (accuracy;
  mean per-image dice at the images' own resolution), and so is the current champion, anew; the new version is
  recommended for `champion` only if it beats the best classical baseline (`registry.beat_classical`) AND the
  champion by more than `registry.margin`. It gets alias `challenger`; `champion` moves only by
  `nanomorph promote` or with NANOMORPH_PROMOTE=1 (CI on main), so `dvc exp run` never changes what users load.
  A model whose content (weights, config, code) is already a version is not logged or registered again.
Writes metrics/register.json (versions, scores, recommendation and why, the store they refer to).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold

from nanomorph.config import Config
from nanomorph.data.io import load_image_stack, load_mask_stack, read_image, read_mask
from nanomorph.data.validation import accepted
from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import resolve_encoder
from nanomorph.models.precision import best_device
from nanomorph.probe.cache import FeatureCache, image_set_fingerprint
from nanomorph.probe.classical import NAME as CLASSICAL
from nanomorph.probe.classical import classical_features
from nanomorph.probe.features import extract_features
from nanomorph.probe.linear import fit_linear_probe
from nanomorph.probe.splits import GivenSplit, split_rule, stratified_split
from nanomorph.segment.classical import fit_classical
from nanomorph.segment.metrics import dice_iou
from nanomorph.serving.model_card import PURPOSE, CardFacts, model_card
from nanomorph.serving.models import atypicality_limit
from nanomorph.serving.package import (
    classifier_config, classifier_content, log_classifier, log_segmenter, segmenter_config, segmenter_content,
)
from nanomorph.serving.train import train_unet, unet_arguments
from nanomorph.stages._common import stage_main, tracked, write_json, on_terminal
from nanomorph.stages._probe_inputs import FEATURE_DIR
from nanomorph.tracking.integrity import load_verified
from nanomorph.tracking.registry import (
    CHALLENGER, CHAMPION, CONTENT_TAG, Decision, apply_decision, promotion_decision, promotion_enabled,
    register_version, registry_state, store_identity, version_by_alias, version_with_content,
)
from nanomorph.tracking.runs import dvc_data_hash, git_commit

BASELINES = ("random", CLASSICAL)   # never deployed; the classical one is what a deployed model must beat


def choose_encoder(features: dict[str, np.ndarray], labels: np.ndarray, *, folds: int, C: float, tol: float,
                   max_iter: int, seed: int) -> dict[str, Any]:
    """The encoder (key of `features`: its features of the training images) whose linear probe has the best
    mean stratified k-fold cross-validated accuracy; ties go to the first by name. Only training images are
    used, so the evaluation split stays untouched by the choice."""
    if not features:
        raise NanomorphError("no pretrained encoder among probe.encoders to deploy (the random baseline never is)")
    labels = np.asarray(labels).astype(str)
    smallest = int(pd.Series(labels).value_counts().min())
    if folds < 2 or smallest < folds:
        raise NanomorphError(f"registry.cv_folds={folds} needs 2 <= folds <= the smallest class's training images "
                             f"({smallest})")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracy = {}
    for name in sorted(features):
        X = features[name]
        scores = [float((fit_linear_probe(X[fit], labels[fit], C=C, max_iter=max_iter, seed=seed, tol=tol)
                         .predict(X[held]) == labels[held]).mean()) for fit, held in splitter.split(X, labels)]
        accuracy[name] = float(np.mean(scores))
    best = max(accuracy, key=lambda name: accuracy[name])  # max keeps the first (by name) of tied scores
    return {"encoder": best, "cv_folds": folds, "cv_accuracy": accuracy}


def sweep_reference(segment_metrics: dict[str, Any], encoder: str) -> dict[str, Any] | None:
    """The segment sweep's median per-image dice for `encoder` at its largest training-set size (None when the
    sweep did not run that encoder): a yardstick for the deployed segmenter, which is trained on more images
    and scored at full resolution on another split, so the two numbers are close relatives, not equals."""
    per_n = segment_metrics.get("median", {}).get(encoder)
    if not per_n:
        return None
    n = max(int(k[1:]) for k in per_n)
    return {"encoder": encoder, "train_images": n, "median_dice": float(per_n[f"n{n}"]["dice"])}


def evaluation_split(rows: pd.DataFrame, fraction: float, seed: int,
                     given: GivenSplit | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(train_idx, eval_idx, eval_hash): the data's own split when `given` (train and validation images train,
    test images evaluate), else the fixed stratified split; the hash names the evaluation images by content
    (sha256 of their sorted file digests), so versions scored on different sets can be told apart."""
    if given is not None:
        train_idx, eval_idx = np.sort(np.concatenate([given.train, given.validation])), given.test
    else:
        train_idx, eval_idx = stratified_split(rows["label"].to_numpy(dtype=str), fraction, seed)
    digest = hashlib.sha256("\n".join(sorted(rows["sha256"].iloc[eval_idx])).encode()).hexdigest()[:16]
    return train_idx, eval_idx, digest


def score_classifier(model, paths: list[str], labels: np.ndarray) -> float:
    """Accuracy of the loaded pyfunc `model` on the evaluation images (given as file paths)."""
    predicted = model.predict(pd.DataFrame({"path": paths}))
    return float((predicted["class"].to_numpy(dtype=str) == np.asarray(labels, dtype=str)).mean())


def score_segmenter(model, paths: list[str], mask_paths: list[str]) -> float:
    """Mean per-image dice of the loaded pyfunc `model`'s masks against the true masks, at the images' own size."""
    predicted = model.predict(pd.DataFrame({"path": paths}))
    dices = [dice_iou(np.asarray(mask, dtype=bool), read_mask(true))[0]
             for mask, true in zip(predicted["mask"], mask_paths)]
    return float(np.mean(dices))


def classical_classifier_score(train_images: np.ndarray, train_labels: np.ndarray, eval_paths: list[str],
                               eval_labels: np.ndarray, *, size: int, min_size: int, C: float, tol: float,
                               max_iter: int, seed: int) -> dict[str, Any]:
    """Accuracy on the evaluation images of the linear probe on classical features fitted on the training part
    (`train_images`: the training images at `size` px, as already loaded for the learned encoders)."""
    X_train = classical_features(train_images, min_size)
    X_eval = classical_features(load_image_stack([Path(p) for p in eval_paths], size), min_size)
    probe = fit_linear_probe(X_train, train_labels, C=C, max_iter=max_iter, seed=seed, tol=tol)
    return {"method": CLASSICAL, "score": float((probe.predict(X_eval) == np.asarray(eval_labels, str)).mean())}


def classical_segmenter_scores(methods: tuple[str, ...], train_images: np.ndarray, train_masks: np.ndarray,
                               eval_paths: list[str], eval_mask_paths: list[str], min_size: int) -> dict[str, Any]:
    """Mean per-image dice on the evaluation images (own resolution) of every classical segmenter fitted on the
    training masks, and the best of them: the score a learned segmenter has to beat."""
    if not methods:
        return {}
    images = [read_image(p) for p in eval_paths]
    truths = [read_mask(p) for p in eval_mask_paths]
    scores = {}
    for method in methods:
        segmenter = fit_classical(method, train_images, train_masks, min_size=min_size)
        scores[method] = {"setting": segmenter.describe(), "score": float(np.mean(
            [dice_iou(segmenter.predict(im), t)[0] for im, t in zip(images, truths)]))}
    best = max(scores, key=lambda m: scores[m]["score"])
    return {"method": best, "score": scores[best]["score"], "all": scores}


def _version_tags(cfg: Config, metric: str, score: float, extra: dict[str, Any]) -> dict[str, Any]:
    root = Path.cwd()
    return {"git_commit": git_commit(root), "dvc_data_hash": dvc_data_hash(root), "params_hash": cfg.params_hash,
            "nanomorph.profile": cfg.profile, f"eval.{metric}": f"{score:.6f}", **extra}


def _register(cfg: Config, client: MlflowClient, kind: str, name: str, metric: str, content: str,
              log_model: Callable[[], Any], score_fn, tags: dict[str, Any],
              baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the new model and the current champion, register the new version (unless a version with the same
    content exists: then that one is re-scored and nothing is logged or registered) and record the decision.

    The decision is a recommendation: `champion` moves only with NANOMORPH_PROMOTE=1 (CI on main) or a later
    `nanomorph promote`. With a classical `baseline` ({method, score} on the same evaluation set), a version
    that does not beat it is never recommended."""
    champion = version_by_alias(client, name, CHAMPION)
    # The champion's code runs only after its files match the sha256 recorded when it was registered.
    champion_score = score_fn(load_verified(client, name, str(champion.version))) if champion is not None else None
    existing = version_with_content(client, name, content)
    is_champion = existing is not None and champion is not None and existing.version == champion.version
    if is_champion:
        new_score = champion_score  # the same version, scored just above
        decision = Decision(CHAMPION, False, f"unchanged: the same content is already champion v{champion.version}")
    else:
        if existing is not None:
            new_score = score_fn(load_verified(client, name, str(existing.version)))
        else:
            logged = log_model()
            model_uri = logged.model_uri
            new_score = score_fn(mlflow.pyfunc.load_model(model_uri))  # logged by this process moments ago
        decision = promotion_decision(metric, new_score, champion.version if champion else None, champion_score,
                                      cfg.registry.margin)
    if baseline and new_score <= baseline["score"]:
        decision = Decision(CHALLENGER, False, f"does not beat the classical baseline {baseline['method']}: "
                                               f"{metric} {new_score:.4f} vs {baseline['score']:.4f}")
    if champion is not None and champion.tags.get("nanomorph.eval_split") != tags["nanomorph.eval_split"]:
        # Still decided on today's evaluation set, but the champion may have trained on part of it.
        decision = replace(decision, reason=decision.reason + (
            f"; caution: champion v{champion.version} was built with another evaluation split "
            f"({champion.tags.get('nanomorph.eval_split', 'unrecorded')}), so it may have trained on some of "
            "these evaluation images"))
    if existing is None:
        version = register_version(model_uri, name,
                                   {**_version_tags(cfg, metric, new_score, tags), CONTENT_TAG: content},
                                   description=f"nanomorph {kind}: {decision.reason}")
    else:
        version = existing
    alias = CHAMPION if is_champion else apply_decision(client, name, str(version.version), decision,
                                                        allow_promotion=promotion_enabled())
    own = {f"{kind}.eval_{metric}": new_score,
           **({f"{kind}.champion_eval_{metric}": champion_score} if champion_score is not None else {})}
    if existing is None:
        # Tied to this model only: without a model id MLflow 3 attaches a run's metrics to every model it logged.
        mlflow.log_metrics(own, model_id=logged.model_id)
    else:
        for key, value in own.items():
            client.log_metric(mlflow.active_run().info.run_id, key, value)
    mlflow.set_tags({f"{kind}.version": str(version.version), f"{kind}.alias": alias})
    return {
        "name": name, "version": str(version.version), "registered": existing is None,
        "recommendation": decision.alias, "reason": decision.reason, "metric": metric, "score": new_score,
        "margin": cfg.registry.margin,
        "previous_champion": None if champion is None else {
            "version": str(champion.version), "score": champion_score,
            "eval_split": champion.tags.get("nanomorph.eval_split")},
        "uri": f"models:/{name}/{version.version}",
        "classical_baseline": baseline,
    }


def _publish_card(client: MlflowClient, cfg: Config, kind: str, entry: dict[str, Any], encoder: str,
                  eval_hash: str) -> None:
    """The version's model card: its description in the registry and a markdown artifact of this run; the
    registered model's own description says what the model is and where the cards are."""
    facts = CardFacts(kind=kind, name=entry["name"], data_source=cfg.data.source, encoder=encoder,
                      metric=entry["metric"], score=entry["score"], train_images=entry["train_images"],
                      eval_images=entry["eval_images"], eval_split=eval_hash, baseline=entry["classical_baseline"],
                      recommendation=entry["recommendation"], reason=entry["reason"])
    card = model_card(facts)
    client.update_model_version(entry["name"], entry["version"], description=card)
    client.update_registered_model(entry["name"], description=PURPOSE[kind] + " Each version's description is its "
                                   "model card (training data, evaluation against the classical baseline, limits).")
    mlflow.log_text(card, f"model_cards/{kind}.md")


@contextmanager
def _convergence_in_one_line(max_iter: int) -> Iterator[None]:
    """Every probe fit that stops at max_iter above tol warns (ConvergenceWarning; scikit-learn's lbfgs with ten
    lines each): the deployed probe, the encoder choice's cross-validation folds, the classical probe. Say it
    once, with what it means. Other warnings pass through
    under Python's default filters (so libraries' own DeprecationWarnings, e.g. mlflow's use of SQLAlchemy and
    pandas, stay hidden as they would be without this context)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    stopped = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if stopped:
        print(f"register: {len(stopped)} probe fit(s) stopped at probe.max_iter={max_iter} before probe.tol; they are "
              "used as they are (raise probe.max_iter to fit tighter)")


def training_features(cfg: Config, name: str, encoder, rows: pd.DataFrame, train_idx: np.ndarray,
                      train_images: np.ndarray, device: str) -> np.ndarray:
    """The encoder's probe features of the training images: read from the probe stage's cache of every image
    (`rows`, in manifest order) when it holds them, else extracted from `train_images`. The cached rows are
    the same function of the same images (bit for bit on the CPU, measured); reading them saves register one
    feature extraction, and the cache is never written here."""
    pr, pt = cfg.probe, cfg.pretrain
    stored = FeatureCache(FEATURE_DIR).stored(
        name, pt.seed, encoder, pr.feature_size, image_set_fingerprint(rows["sha256"].astype(str).tolist()),
        len(rows), device=device, stages=pr.feature_stages, dihedral=pr.feature_dihedral)
    if stored is not None:
        return stored[train_idx]
    return extract_features(encoder, train_images, batch_size=64, device=device, stages=pr.feature_stages,
                            dihedral=pr.feature_dihedral)


def run_register(cfg: Config, args: argparse.Namespace) -> None:
    with _convergence_in_one_line(cfg.probe.max_iter):
        _run_register(cfg, args)


def _run_register(cfg: Config, _args: argparse.Namespace) -> None:
    rg, pt, sg, pr = cfg.registry, cfg.pretrain, cfg.segment, cfg.probe
    segment_path = Path("metrics/segment.json")
    if not segment_path.is_file():
        raise NanomorphError(f"{segment_path}: no segment metrics; run the segment stage first")
    rows = accepted(cfg.validate.manifest, "nanowire")
    if rows.empty:
        raise NanomorphError(f"{cfg.validate.manifest}: no usable nanowire images")
    given = split_rule(rows, rg.eval_fraction, cfg.validate.manifest).given
    train_idx, eval_idx, eval_hash = evaluation_split(rows, rg.eval_fraction, rg.eval_seed, given)
    train_rows, eval_rows = rows.iloc[train_idx], rows.iloc[eval_idx]
    seg_train = train_rows[train_rows["mask_path"].notna()]
    seg_eval = eval_rows[eval_rows["mask_path"].notna()]
    if seg_train.empty or seg_eval.empty:
        raise NanomorphError("the fixed split leaves no masked images to train or evaluate the segmenter on")
    device = best_device()
    train_labels = train_rows["label"].to_numpy(dtype=str)
    images = load_image_stack([Path(p) for p in train_rows["path"]], pr.feature_size)
    encoders = {name: resolve_encoder(name, pt.arch, pt.seed) for name in pr.encoders if name not in BASELINES}
    features = {name: training_features(cfg, name, model, rows, train_idx, images, device)
                for name, model in encoders.items()}
    choice = choose_encoder(features, train_labels, folds=rg.cv_folds, C=pr.C, tol=pr.tol, max_iter=pr.max_iter,
                            seed=rg.seed)
    encoder_name = choice["encoder"]
    encoder_path = Path("models/encoders") / f"{encoder_name}.pt"
    encoder = encoders[encoder_name]
    common_tags = {"nanomorph.encoder": encoder_name, "nanomorph.eval_split": eval_hash,
                   "nanomorph.eval_split_params": f"fraction={rg.eval_fraction},seed={rg.eval_seed}"}

    with tracked(cfg, "register", ("registry",)):
        mlflow.log_params({"encoder": encoder_name, "arch": pt.arch, "probe.C": pr.C, "probe.tol": pr.tol,
                           "probe.max_iter": pr.max_iter,
                           "segment.lr": sg.lr, "segment.epochs": sg.epochs_for(len(seg_train)),
                           "segment.steps": sg.steps, "probe.feature_size": pr.feature_size,
                           "probe.feature_stages": ",".join(pr.feature_stages),
                           "probe.feature_dihedral": pr.feature_dihedral,
                           "train_images": len(train_rows), "eval_images": len(eval_rows), "eval_split": eval_hash})
        client = MlflowClient()

        # The deployed probe: fitted on the chosen encoder's features of every training image.
        probe = fit_linear_probe(features[encoder_name], train_labels, C=pr.C, max_iter=pr.max_iter, seed=rg.seed,
                                 tol=pr.tol)
        classifier_settings = {"image_size": pr.feature_size, "encoder_name": encoder_name,
                               "atypicality_limit": atypicality_limit(probe, features[encoder_name]),
                               "stages": pr.feature_stages, "dihedral": pr.feature_dihedral}
        classifier_sha256 = classifier_content(encoder_path, probe, classifier_config(probe, **classifier_settings))
        eval_paths, eval_labels = eval_rows["path"].tolist(), eval_rows["label"].to_numpy(dtype=str)
        classical_classifier = classical_classifier_score(
            images, train_labels, eval_paths, eval_labels, size=pr.feature_size,
            min_size=sg.object_min_size, C=pr.C, tol=pr.tol, max_iter=pr.max_iter, seed=rg.seed)
        # Each model is logged in a run of its own: MLflow 3 copies a run's metrics into every model logged in it.
        with mlflow.start_run(run_name="register classifier", nested=True):
            classifier = _register(
                cfg, client, "classifier", rg.classifier, "accuracy", classifier_sha256,
                lambda: log_classifier(encoder_path, probe, **classifier_settings),
                lambda model: score_classifier(model, eval_paths, eval_labels),
                {**common_tags, "train.images": len(train_rows), "probe.C": pr.C},
                baseline=classical_classifier if rg.beat_classical else None,
            )
            classifier.update(train_images=len(train_rows), eval_images=len(eval_rows))
            _publish_card(client, cfg, "classifier", classifier, encoder_name, eval_hash)

        epochs = sg.epochs_for(len(seg_train))
        seg_images = load_image_stack([Path(p) for p in seg_train["path"]], sg.image_size)
        seg_masks = load_mask_stack([Path(p) for p in seg_train["mask_path"]], sg.image_size)
        # unet_arguments: the section -> keywords mapping nanomorph.api.train_segmenter shares (its epochs: `epochs`)
        unet = train_unet(encoder.resnet_state_dict(), seg_images, seg_masks, arch=pt.arch,
                          **unet_arguments(sg, len(seg_train)), seed=rg.seed, device=device, progress=on_terminal())
        segmenter_settings = {"arch": pt.arch, "image_size": sg.image_size, "encoder_name": encoder_name,
                              "object_min_size": sg.object_min_size, "dihedral": sg.dihedral}
        segmenter_sha256 = segmenter_content(unet, segmenter_config(**segmenter_settings))
        seg_eval_paths, seg_eval_masks = seg_eval["path"].tolist(), seg_eval["mask_path"].tolist()
        classical_segmenter = classical_segmenter_scores(sg.classical, seg_images, seg_masks, seg_eval_paths,
                                                         seg_eval_masks, sg.object_min_size)
        with mlflow.start_run(run_name="register segmenter", nested=True):
            segmenter = _register(
                cfg, client, "segmenter", rg.segmenter, "dice", segmenter_sha256,
                lambda: log_segmenter(unet, **segmenter_settings),
                lambda model: score_segmenter(model, seg_eval_paths, seg_eval_masks),
                {**common_tags, "train.images": len(seg_train), "train.epochs": epochs, "segment.lr": sg.lr},
                baseline=(classical_segmenter or None) if rg.beat_classical else None,
            )
            segmenter.update(train_images=len(seg_train), eval_images=len(seg_eval), epochs=epochs,
                             sweep_reference=sweep_reference(json.loads(segment_path.read_text()), encoder_name))
            _publish_card(client, cfg, "segmenter", segmenter, encoder_name, eval_hash)

        report = {
            "encoder_choice": choice,
            "classical_baselines": {"classifier": classical_classifier, "segmenter": classical_segmenter},
            "eval_split": {"fraction": rg.eval_fraction, "seed": rg.eval_seed, "hash": eval_hash},
            "classifier": classifier,
            "segmenter": segmenter,
            # Which store the versions above live in (never its credentials): they mean nothing elsewhere.
            "store": store_identity(mlflow.get_tracking_uri()),
        }
        write_json("metrics/register.json", report)
        mlflow.log_artifact("metrics/register.json")
        aliases = {name: registry_state(client, name)["aliases"] for name in (rg.classifier, rg.segmenter)}
    for kind in ("classifier", "segmenter"):
        entry = report[kind]
        state = ", ".join(f"{a} = v{v}" for a, v in aliases[entry["name"]].items()) or "no aliases"
        how = "registered" if entry["registered"] else "unchanged, not registered again"
        print(f"{entry['name']} v{entry['version']} ({how}) recommended {entry['recommendation']}: "
              f"{entry['reason']}; now {state}")
    if not promotion_enabled() and any(report[k]["recommendation"] == CHAMPION for k in ("classifier", "segmenter")):
        print("champion moves only by `nanomorph promote MODEL --reason ...` (or NANOMORPH_PROMOTE=1)")


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run_register, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
