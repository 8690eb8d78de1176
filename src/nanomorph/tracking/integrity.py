"""Integrity of registered model versions: the sha256 of every artifact file, kept in the registry.

When a version is registered, its files are downloaded back from the artifact store and hashed; the manifest
{relative path: sha256} becomes the version tag `nanomorph.sha256`. Loading goes the other way: download,
hash, compare, and only then hand the folder to MLflow's pyfunc loader, which imports the model's code. A
file that was changed, added or removed after registration stops the load with one line naming it.

Why a tag: tags live in the tracking database, the artifacts in the artifact store. Whoever can write files in
the store (a shared folder, a bucket) cannot also rewrite what they are checked against; that takes registry
write access, which the shared server grants to writers only.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from nanomorph.errors import NanomorphError

DIGEST_TAG = "nanomorph.sha256"


class ModelIntegrityError(NanomorphError):
    """A registered model's files are not the ones that were registered."""


# Written by MLflow itself into a folder a `models:/` URI was downloaded to (and, for a local store, into the
# store's copy): the model's name and version, no code and no weights. Left out on both sides of the check.
MLFLOW_WRITTEN = frozenset({"registered_model_meta"})


def file_digests(root: Path) -> dict[str, str]:
    """{path relative to `root` (posix): sha256 hex} of every file under `root` (but MLFLOW_WRITTEN), sorted."""
    digests = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        if path.relative_to(root).as_posix() in MLFLOW_WRITTEN:
            continue
        with open(path, "rb") as handle:
            digests[path.relative_to(root).as_posix()] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def check_digests(root: Path, expected: dict[str, str], label: str) -> None:
    """Raise ModelIntegrityError naming the first file under `root` that differs from `expected`."""
    found = file_digests(root)
    expected = {rel: digest for rel, digest in expected.items() if rel not in MLFLOW_WRITTEN}
    for rel in sorted(expected.keys() | found.keys()):
        if rel not in found:
            raise ModelIntegrityError(f"{label}: {rel} was registered but is missing from the artifact store")
        if rel not in expected:
            raise ModelIntegrityError(f"{label}: {rel} was not part of the registered model (added afterwards)")
        if found[rel] != expected[rel]:
            raise ModelIntegrityError(f"{label}: {rel} has changed since registration (sha256 {found[rel][:12]}... "
                                      f"vs registered {expected[rel][:12]}...); refusing to load it")


def _download(client: MlflowClient, name: str, version: str) -> Path:
    """The files of `name`/`version`, freshly downloaded from the store `client` talks to."""
    import mlflow.artifacts

    target = Path(tempfile.mkdtemp(prefix=f"nanomorph-{name}-v{version}-"))
    # Kept until the process exits: the loaded model's code directory stays on sys.path.
    atexit.register(shutil.rmtree, target, True)
    # Resolved through `client`, not MLflow's process-wide registry: a `models:/` URI is looked up in the global
    # default store (./mlflow.db), so a client of a server would get the local store's version of that name.
    location = client.get_model_version_download_uri(name, version)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(target),
                                                    tracking_uri=client.tracking_uri))


def record_digests(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """Hash the files of `name`/`version` as the artifact store now holds them and tag the version with them."""
    local = _download(client, name, version)
    digests = file_digests(local)
    client.set_model_version_tag(name, version, DIGEST_TAG, json.dumps(digests, sort_keys=True,
                                                                         separators=(",", ":")))
    return digests


def verified_model_dir(client: MlflowClient, name: str, version: str) -> Path:
    """A local copy of `name`/`version` whose every file matches the sha256 recorded at registration."""
    registered = client.get_model_version(name, version)
    label = f"model {name}/{version}"
    manifest = (registered.tags or {}).get(DIGEST_TAG)
    if not manifest:
        raise ModelIntegrityError(f"{label} has no recorded sha256 manifest (tag {DIGEST_TAG}): it was registered "
                                  "without one and cannot be verified; register it again")
    local = _download(client, name, version)
    check_digests(local, json.loads(manifest), label)
    return local


def load_verified(client: MlflowClient, name: str, version: str):
    """The pyfunc model `name`/`version`, loaded only after its files passed `verified_model_dir`."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(verified_model_dir(client, name, version)))
