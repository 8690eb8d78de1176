"""Model cards: what a registered nanomorph model is for, what it was trained and judged on, and its limits.

The register stage writes one per version, as the version's description (MLflow renders it as markdown) and as a
`model_card.md` artifact of the run that logged it, so whoever pulls `models:/<name>@champion` can read what they
are getting without opening this repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PURPOSE = {
    "classifier": "Classifies a TEM micrograph of nanowires into one morphology class (bundle, dispersed, network, "
                  "singular), after Lu et al. 2022 (arXiv 2203.13875): a linear softmax probe on the frozen "
                  "features of a self-supervised ResNet encoder.",
    "segmenter": "Segments nanowire pixels in a TEM micrograph and reports pixel density and percolation "
                 "(DBSCAN eps 2, min_samples 2, a cluster spanning the field of view), after Lu et al. 2022: a "
                 "U-Net whose encoder is the self-supervised ResNet.",
}
DATA = {
    "synthetic": "the embedded procedural generator of TEM-like nanowire images (SYNTHETIC images with exact "
                 "masks, calibrated on four real panels of the paper). Its scores say how well the method works on "
                 "generated images, not on your micrographs",
    "zenodo": "the paper's nanowire TEM images (Zenodo 10.5281/zenodo.6377141)",
    "folder": "a lab's own labelled images (data.source: folder)",
}


@dataclass(frozen=True)
class CardFacts:
    kind: str                      # classifier | segmenter
    name: str                      # registered model name
    data_source: str               # params data.source
    encoder: str                   # pretraining method of the encoder
    metric: str                    # accuracy | dice
    score: float                   # on the fixed evaluation split
    train_images: int
    eval_images: int
    eval_split: str                # content hash of the evaluation split
    baseline: dict[str, Any] | None  # {method, score} of the best classical method on the same split
    recommendation: str            # champion | challenger
    reason: str


def model_card(facts: CardFacts) -> str:
    """The markdown card of one registered version."""
    data = DATA.get(facts.data_source, f"data.source '{facts.data_source}'")
    if facts.baseline:
        versus = (f"{facts.baseline['score']:.3f} for the classical baseline ({facts.baseline['method']}, fitted on "
                  "the same training images, no learning)")
        verdict = ("beats it" if facts.score > facts.baseline["score"] else
                   "does NOT beat it: for this use the classical method is as good or better")
    else:
        versus, verdict = "no classical baseline was scored", "not compared"
    return "\n".join([
        f"# {facts.name} ({facts.kind})",
        "",
        "## Intended use",
        PURPOSE[facts.kind],
        "Input: one grey-level micrograph (a file path, or an image array in [0, 1] or uint8/uint16), any size. "
        "Research use: a first pass that a materials scientist checks, not an unattended measurement.",
        "",
        "## Training data",
        f"Trained on {facts.train_images} images from {data}. Encoder: {facts.encoder} self-supervised "
        "pretraining (no labels).",
        "",
        "## Evaluation",
        f"{facts.metric} {facts.score:.3f} on {facts.eval_images} held-out images (fixed evaluation split "
        f"{facts.eval_split}, never trained on); {versus}: the model {verdict}.",
        f"Register stage recommendation: {facts.recommendation} ({facts.reason}).",
        "",
        "## Limitations",
        "- Images unlike the training data (other materials, magnifications, detectors, or drawings instead of "
        "micrographs) get confident but meaningless outputs. The classifier flags an input whose features lie "
        "beyond every training image's (`out_of_distribution`, with its `atypicality`); the segmenter has no such "
        "check, so look at its overlays.",
        "- Scores come from one evaluation split; the report's sweep over many splits gives their spread.",
        "- Percolation follows the paper's rule on the predicted mask: a few wrong pixels can join or split "
        "clusters, so look at the overlay of borderline images." if facts.kind == "segmenter" else
        "- Four classes only; dispersed vs network is the commonest confusion.",
        "",
    ])
