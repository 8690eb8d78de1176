"""End to end: `dvc repro` of the whole pipeline on the micro profile in a scratch copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# md5 of every output in the micro run's dvc.lock, from a fresh project (no DVC cache, empty MLflow store).
# Rewrite it after a change that is meant to move results: NANOMORPH_WRITE_MICRO_REFERENCE=1 pytest -k e2e
MICRO_REFERENCE = Path(__file__).with_name("micro_reference_md5.json")


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _set_param(params: Path, dotted: str, value) -> None:
    tree = yaml.safe_load(params.read_text())
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    params.write_text(yaml.safe_dump(tree, sort_keys=False))


def _output_md5s(lock: Path) -> dict[str, str]:
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {out["path"]: out["md5"] for body in stages.values() for out in body.get("outs", [])}


def _ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[tuple[Path, dict]]:
    work = tmp_path_factory.mktemp("e2e") / "project"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml", "pyproject.toml"):
        shutil.copy2(PROJECT_ROOT / name, work / name)
    shutil.copytree(PROJECT_ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # The report shows the generator-realism figure and the real-data benchmark from benchmarks/results.
    shutil.copytree(PROJECT_ROOT / "benchmarks" / "results", work / "benchmarks" / "results")
    for sub in ("data", "models"):
        (work / sub).mkdir()
        shutil.copy2(PROJECT_ROOT / sub / ".gitignore", work / sub / ".gitignore")
    _set_param(work / "params.yaml", "profile", "micro")
    # Both of the paper's methods (the paper profile's setting; the cpu default pretrains SimCLR alone), so the
    # foreach stage, the encoder choice in register and the per-method report columns are all exercised.
    _set_param(work / "params.yaml", "pretrain.methods", ["simclr", "barlow_twins"])
    _set_param(work / "params.yaml", "probe.encoders", ["simclr", "barlow_twins", "random", "classical"])
    _set_param(work / "params.yaml", "segment.encoders", ["barlow_twins", "simclr", "random"])
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(work / "src"),  # the stages import the scratch copy's code
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
        "DVC_NO_ANALYTICS": "1",
    })
    _run(["git", "init", "-q", "-b", "main"], work, env)
    _run([sys.executable, "-m", "dvc", "init", "-q"], work, env)
    # The project's DVC settings, default remote included (a folder beside the project: here in the scratch dir).
    shutil.copy2(PROJECT_ROOT / ".dvc" / "config", work / ".dvc" / "config")
    (work / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "scratch project"], work, env)
    yield work, env
    # ~1 GB of models, DVC cache and MLflow artifacts: free it now, not at the end of the session (CI disk).
    shutil.rmtree(work.parent, ignore_errors=True)


@pytest.mark.slow
def test_repro_runs_every_stage_then_is_a_noop(project):
    work, env = project
    first = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    assert {"fetch", "validate", "pretrain@simclr", "pretrain@barlow_twins", "probe", "anchors", "advisor", "segment",
            "analyse", "register", "report"} <= _ran_stages(first.stdout)
    assert "mlflow ui --backend-store-uri" in first.stdout
    # Not a terminal: no progress-bar frames in the log (tqdm redraws with carriage returns).
    assert "\r" not in first.stdout + first.stderr
    for out in ("reports/report.html", "reports/metrics.json", "reports/accuracy_vs_labels.png",
                "models/encoders/simclr.pt", "models/encoders/barlow_twins.pt", "data/validated/manifest.csv"):
        assert (work / out).is_file(), out
    headline = json.loads((work / "reports/metrics.json").read_text())
    # Every learned method beside its random-init and classical baselines, in the headline and the report.
    assert set(headline["probe"]["median_accuracy"]) == {"simclr", "barlow_twins", "random", "classical"}
    assert set(headline["segment"]["median_dice"]) == {"simclr", "barlow_twins", "random", "otsu", "local"}
    assert all(0.0 <= v <= 1.0 for v in headline["segment"]["median_dice"].values())
    report = (work / "reports/report.md").read_text()
    assert report.index("## Headline") < report.index("## Few-shot classification") < report.index("## Data validation")
    register = json.loads((work / "metrics/register.json").read_text())
    for kind in ("classifier", "segmenter"):
        assert register[kind]["classical_baseline"]["score"] >= 0.0

    # Reproducible: every output of a fresh run has the md5 of the committed reference run (issue 13), whatever
    # x86-64 CPU runs it (nanomorph.stages pins the numerical libraries' kernels to AVX2).
    outputs = _output_md5s(work / "dvc.lock")
    if os.environ.get("NANOMORPH_WRITE_MICRO_REFERENCE") == "1":
        MICRO_REFERENCE.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
    reference = json.loads(MICRO_REFERENCE.read_text())
    moved = [f"{path}: {reference.get(path)} -> {outputs.get(path)}" for path in sorted(set(reference) | set(outputs))
             if reference.get(path) != outputs.get(path)]
    assert not moved, "outputs differ from the reference run:\n" + "\n".join(moved)

    second = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    assert _ran_stages(second.stdout) == set()


@pytest.mark.slow
def test_changing_one_param_reruns_only_its_dependants(project):
    work, env = project
    _set_param(work / "params.yaml", "probe.C", 0.5)
    third = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    # register cross-validates probes with probe.C to pick its encoder, and fits the deployed probe with it;
    # the anchor study and the advisor fit probes with it too
    assert _ran_stages(third.stdout) == {"probe", "anchors", "advisor", "register", "report"}
    # The advisor's own setting re-runs the advisor (and the report showing it), not the sweep (issue 16).
    _set_param(work / "params.yaml", "probe.advisor_budgets", [4, 8])
    fourth = _run([sys.executable, "-m", "dvc", "repro"], work, env)
    assert _ran_stages(fourth.stdout) == {"advisor", "report"}

    metrics = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], work, env)
    headline = json.loads(metrics.stdout)[""]["data"]["reports/headline.json"]["data"]
    assert any(key.startswith("acc_n") for key in headline) and any(key.startswith("dice_n") for key in headline)
    plots = _run([sys.executable, "-m", "dvc", "plots", "show", "--json"], work, env)
    shown = json.loads(plots.stdout)["data"]
    assert {"probe accuracy vs labels per class", "segmentation dice vs training images"} <= set(shown)


@pytest.mark.slow
def test_exp_run_sets_a_param_and_tracks_nested_mlflow_runs(project):
    work, env = project
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "results"], work, env)
    exp = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "registry.margin=0.02"], work, env)
    assert _ran_stages(exp.stdout) == {"register", "report"}  # the promotion rule, and the report that shows it

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["nanomorph"], output_format="list")
    by_id = {r.info.run_id: r for r in runs}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    for run in children:  # stage runs hang under a pipeline run; register's per-model runs under the stage run
        chain = [run]
        while "mlflow.parentRunId" in chain[-1].data.tags:
            chain.append(by_id[chain[-1].data.tags["mlflow.parentRunId"]])
        assert len(chain) <= 3, [r.info.run_name for r in chain]
    stage_runs = [r for r in children if "nanomorph.stage" in r.data.tags]
    assert {r.data.tags["nanomorph.stage"] for r in stage_runs} >= {"fetch", "probe", "segment", "report", "register"}
    assert all(r.data.tags["git_commit"] != "unknown" for r in stage_runs)


def _file_md5s(root: Path, outs: list[str]) -> dict[str, str]:
    """md5 of every file of the listed outputs (files or folders) under `root`."""
    import hashlib

    found = {}
    for out in outs:
        path = root / out
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            found[file.relative_to(root).as_posix()] = hashlib.md5(file.read_bytes()).hexdigest()
    return found


@pytest.mark.slow
def test_push_then_pull_into_a_fresh_clone_restores_every_output(project):
    work, env = project
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "outputs to share", "--allow-empty"], work, env)
    _run([*dvc, "push"], work, env)
    assert (work.parent / "nanomorph-dvc-remote").is_dir()  # the default remote: beside the project

    clone = work.parent / "clone"  # beside the project too, so its relative remote is the same folder
    _run(["git", "clone", "-q", str(work), str(clone)], work.parent, env)
    outs = list(_output_md5s(work / "dvc.lock"))
    assert not (clone / "models" / "encoders" / "simclr.pt").exists()
    _run([*dvc, "pull"], clone, env)
    pulled, original = _file_md5s(clone, outs), _file_md5s(work, outs)
    assert pulled == original and any(k.startswith("models/encoders/") for k in pulled)
    assert any(k.startswith("data/") for k in pulled) and any(k.startswith("metrics/") for k in pulled)
    status = _run([*dvc, "status"], clone, env)
    assert "up to date" in status.stdout
