"""The MLflow model registry (MLflow 3: aliases, no stages): references, promotion rule, version tags, state.

A registered model has at most one version under each alias. The register stage judges every new version:
it is *recommended* for `champion` when it beats the current champion on the fixed evaluation set by more than
the margin (or there is no champion yet), else it stays `challenger`. Registering never moves `champion` by
itself: that takes `nanomorph promote` (or the register stage with `NANOMORPH_PROMOTE=1`, the flag CI sets on
main), which records who promoted, when and why on the version. So an experiment (`dvc exp run`) can add
challengers but never changes what users load: `models:/<name>@champion`.

A version also carries the sha256 of its content (`nanomorph.content_sha256`: weights, config and code, not the
MLflow metadata that differs from log to log); a model whose content is already registered is not registered
again (`version_with_content`).
"""

from __future__ import annotations

import getpass
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from nanomorph.errors import NanomorphError

CHAMPION = "champion"
CHALLENGER = "challenger"
CONTENT_TAG = "nanomorph.content_sha256"
PROMOTE_ENV = "NANOMORPH_PROMOTE"
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


def _has_versions(client: MlflowClient, name: str) -> bool:
    try:
        return bool(client.search_model_versions(f"name = '{name}'", max_results=1))
    except MlflowException:
        return False


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
        hint = (f"no version is champion yet: the register stage only recommends; `nanomorph promote {ref.name} "
                "--reason ...` decides" if ref.alias == CHAMPION and _has_versions(client, ref.name)
                else "run the register stage, or check the name and alias")
        raise NanomorphError(f"model '{ref}' not found in the registry at {tracking_uri} ({hint})")
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


def set_alias(client: MlflowClient, name: str, alias: str, version: str, attempts: int = 4) -> None:
    """`client.set_registered_model_alias`, tried again when the store reports a conflict: MLflow's SQL store
    sets an alias by select-then-insert, so two writers creating the same alias at once make one of them fail
    on the unique key (seen with two register runs against one PostgreSQL server). Setting an alias is
    idempotent, and the last writer wins, as with any alias move."""
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except MlflowException as exc:
            refused = exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_DOES_NOT_EXIST",
                                         "INVALID_PARAMETER_VALUE")
            if refused or attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def promotion_enabled() -> bool:
    """Whether the register stage may move `champion` itself: only with NANOMORPH_PROMOTE=1 (CI on main)."""
    return os.environ.get(PROMOTE_ENV, "") == "1"


def who() -> str:
    """The registry user (MLFLOW_TRACKING_USERNAME) when there is one, else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def promote(client: MlflowClient, name: str, version: str, reason: str, via: str) -> str | None:
    """Move `champion` of `name` to `version`, recording on the version who, when, why and the champion it
    replaced; returns that previous champion's version (None when there was none)."""
    if not reason.strip():
        raise NanomorphError("a promotion needs a reason")
    previous = version_by_alias(client, name, CHAMPION)
    set_alias(client, name, CHAMPION, version)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for key, value in {"nanomorph.promoted_by": who(), "nanomorph.promoted_at": stamp,
                       "nanomorph.promoted_via": via, "nanomorph.promotion_reason": reason,
                       "nanomorph.replaced_champion": previous.version if previous else "none"}.items():
        client.set_model_version_tag(name, version, key, str(value))
    return None if previous is None else str(previous.version)


def apply_decision(client: MlflowClient, name: str, version: str, decision: Decision, *,
                   allow_promotion: bool) -> str:
    """Record the decision on `version` (tags `nanomorph.decision` = recommended alias, and its reason). With
    `allow_promotion` a `champion` decision moves the alias (`promote`); otherwise the version becomes
    `challenger` whatever the decision. Returns the alias the version now has."""
    client.set_model_version_tag(name, version, "nanomorph.decision", decision.alias)
    client.set_model_version_tag(name, version, "nanomorph.decision_reason", decision.reason)
    if decision.alias == CHAMPION and allow_promotion:
        promote(client, name, version, decision.reason, via=f"register stage ({PROMOTE_ENV}=1)")
        return CHAMPION
    set_alias(client, name, CHALLENGER, version)
    return CHALLENGER


def store_identity(tracking_uri: str, root: Path | None = None) -> dict[str, str]:
    """Which registry a version number refers to, without credentials: {'uri', 'kind'}. A local store (sqlite
    or a folder) is this checkout's own, and its versions exist nowhere else; inside the checkout (`root`, the
    working directory by default) its path is written relative to it, so the record does not depend on where the
    project was cloned."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https", "databricks"):
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        uri = urlunsplit((parts.scheme, netloc, parts.path, "", "")) if parts.scheme != "databricks" else tracking_uri
        return {"uri": uri, "kind": "shared server"}
    uri = tracking_uri
    scheme = next((p for p in ("sqlite:///", "file://") if tracking_uri.startswith(p)), "" if "://" not in
                  tracking_uri else None)
    if scheme is not None:
        path, base = Path(tracking_uri[len(scheme):]), (root or Path.cwd()).resolve()
        if path.is_absolute() and path.resolve().is_relative_to(base):
            relative = path.resolve().relative_to(base).as_posix()
            uri = f"sqlite:///{relative}" if scheme == "sqlite:///" else relative  # a file:// URI is never relative
    return {"uri": uri, "kind": "local store of this checkout"}


def version_with_content(client: MlflowClient, name: str, content_sha256: str) -> ModelVersion | None:
    """The newest version of `name` whose content fingerprint is `content_sha256`, or None."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise
    same = [v for v in versions if (v.tags or {}).get(CONTENT_TAG) == content_sha256]
    return max(same, key=lambda v: int(v.version)) if same else None


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
