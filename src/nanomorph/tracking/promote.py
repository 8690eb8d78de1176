"""`nanomorph promote MODEL --reason TEXT [--version N]`: move `champion` to a registered version, on purpose.

The register stage only recommends (tag `nanomorph.decision`); this command is the decision. Without
`--version` it promotes the newest version the register stage recommended for champion that is newer than the
current champion, and refuses when there is none. `--version N` promotes N whatever was recommended (the
reason says why). The version's files are checked against their registered sha256 first. Who (the registry
user, else the OS user), when, why and the champion it replaced are recorded as tags on the version.

MODEL is `classifier` or `segmenter` (the project's `registry.*` names) or a registered model name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from nanomorph.errors import NanomorphError, print_error
from nanomorph.tracking.registry import CHAMPION, promote, version_by_alias


def candidate(client, name: str) -> str:
    """The newest version recommended for champion and newer than the current champion."""
    champion = version_by_alias(client, name, CHAMPION)
    floor = int(champion.version) if champion is not None else 0
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version), reverse=True)
    if not versions:
        raise NanomorphError(f"model '{name}' has no versions: run the register stage first")
    for version in versions:
        if int(version.version) <= floor:
            break
        if (version.tags or {}).get("nanomorph.decision") == CHAMPION:
            return str(version.version)
    newest = versions[0]
    why = (newest.tags or {}).get("nanomorph.decision_reason", "no recorded decision")
    where = f"newer than champion v{floor}" if champion is not None else "at all"
    raise NanomorphError(f"no version of '{name}' {where} was recommended for champion (newest v{newest.version}: "
                         f"{why}); name one with --version N to promote it anyway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanomorph promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="classifier | segmenter | a registered model name")
    parser.add_argument("--reason", required=True, help="why (recorded on the version)")
    parser.add_argument("--version", default=None, help="the version to promote (default: the recommended one)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's tracking.tracking_uri)")
    parser.add_argument("--params", default=None, type=Path, help="the project's params.yaml (default ./params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import mlflow

        from nanomorph.predict import project_settings, tracking_uri
        from nanomorph.tracking.integrity import verified_model_dir

        project = project_settings(args.params)
        names = {"classifier": project.classifier.split("@")[0], "segmenter": project.segmenter.split("@")[0]}
        name = names.get(args.model, args.model)
        uri = tracking_uri(args.tracking_uri, project.tracking_uri)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        version = args.version or candidate(client, name)
        verified_model_dir(client, name, version)   # a changed artifact is refused before it can be champion
        previous = promote(client, name, version, args.reason, via="nanomorph promote")
    except NanomorphError as exc:
        print_error("nanomorph promote: error", exc)
        return 2
    except MlflowException as exc:  # the registry's refusals (401/403, unknown version): one line, no traceback
        print_error("nanomorph promote: error", exc, exc.message.splitlines()[:1])
        return 2
    print(f"{name} v{version} is champion" + (f" (was v{previous})" if previous else "") + f": {args.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
