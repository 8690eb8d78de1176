"""The MLflow model registry (MLflow 3: aliases, no stages): references, promotion rule, version tags, state.

A registered model has at most one version under each alias. The register stage gives every new version
either `champion` (it beats the current champion on the fixed evaluation set by more than the margin, or
there is no champion yet) or `challenger`. Users load `models:/<name>@champion`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from nanomorph.errors import NanomorphError

CHAMPION = "champion"
CHALLENGER = "challenger"
# A registered model name: what MLflow accepts in a models:/ URI without escaping.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_REF = re.compile(rf"^(?P<name>{_NAME})(?:@(?P<alias>{_NAME})|/(?P<version>[0-9]+))?$")


@dataclass(frozen=True)
class ModelRef:
    """`name@alias` or `name/version` of a registered model."""

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" if self.version else f"{self.name}@{self.alias}"


def parse_model_ref(text: str, default_alias: str = CHAMPION) -> ModelRef:
    """'name@alias', 'name/3' or plain 'name' (-> name@default_alias); anything else is a NanomorphError."""
    match = _REF.match(text.strip())
    if not match:
        raise NanomorphError(f"'{text}' is not a model reference (expected NAME@ALIAS, NAME/VERSION or NAME)")
    if match["version"]:
        return ModelRef(match["name"], version=match["version"])
    return ModelRef(match["name"], alias=match["alias"] or default_alias)


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version under `alias`, or None when the model or the alias does not exist."""
    # Looked up through the model's alias table: MLflow reports a missing alias of an existing model as an
    # invalid parameter, which cannot be told apart from other invalid parameters without parsing messages.
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    if alias not in (model.aliases or {}):
        return None
    return client.get_model_version_by_alias(name, alias)


def resolve(client: MlflowClient, ref: ModelRef, tracking_uri: str) -> ModelVersion:
    """The version `ref` names; a NanomorphError naming the reference and the store when there is none."""
    try:
        if ref.version:
            return client.get_model_version(ref.name, ref.version)
        found = version_by_alias(client, ref.name, ref.alias)
    except MlflowException as exc:
        if not _not_found(exc):
            raise
        found = None
    if found is None:
        raise NanomorphError(f"model '{ref}' not found in the registry at {tracking_uri} "
                             "(run the register stage, or check the name and alias)")
    return found


@dataclass(frozen=True)
class Decision:
    """The alias a new version gets and why."""

    alias: str
    promoted: bool
    reason: str


def promotion_decision(metric: str, new_score: float, champion_version: str | None,
                       champion_score: float | None, margin: float) -> Decision:
    """Champion only when there is none yet or `new_score > champion_score + margin`; else challenger.

    Both scores must come from the same evaluation set; higher is better.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if champion_version is None:
        return Decision(CHAMPION, True, f"first evaluated version: no champion to beat ({metric} {new_score:.4f})")
    if champion_score is None:
        raise ValueError("a champion version needs its score")
    gain = new_score - champion_score
    verdict = (f"{metric} {new_score:.4f} vs champion v{champion_version} {champion_score:.4f} "
               f"(difference {gain:+.4f}, margin {margin:g})")
    if gain > margin:
        return Decision(CHAMPION, True, f"beats the champion by more than the margin: {verdict}")
    return Decision(CHALLENGER, False, f"does not beat the champion by more than the margin: {verdict}")


def register_version(model_uri: str, name: str, tags: dict[str, Any], description: str = "") -> ModelVersion:
    """Register the logged model at `model_uri` as a new version of `name` (created when absent), tagged, with
    the sha256 of each of its files recorded (nanomorph.tracking.integrity) for loaders to verify."""
    import mlflow

    from nanomorph.tracking.integrity import record_digests

    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    client = MlflowClient()
    record_digests(client, name, str(version.version))
    if description:
        client.update_model_version(name, version.version, description=description)
    return client.get_model_version(name, str(version.version))


def apply_decision(client: MlflowClient, name: str, version: str, decision: Decision) -> None:
    """Point the decided alias at `version` (the alias moves away from any other version) and tag the version."""
    client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, "nanomorph.decision", decision.alias)
    client.set_model_version_tag(name, version, "nanomorph.decision_reason", decision.reason)


def registry_state(client: MlflowClient, name: str) -> dict[str, Any]:
    """{'aliases': {alias: version}, 'versions': [{version, aliases, run_id, tags}]} of one registered model."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return {"aliases": {}, "versions": []}
        raise
    versions = client.search_model_versions(f"name = '{name}'")
    by_version = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    rows = [{"version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])), "run_id": v.run_id,
             "tags": dict(v.tags)} for v in sorted(versions, key=lambda v: int(v.version))]
    return {"aliases": {a: str(v) for a, v in sorted((model.aliases or {}).items())}, "versions": rows}
