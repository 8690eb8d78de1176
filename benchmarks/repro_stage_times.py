"""How long does a new user's `dvc repro` take, stage by stage?

Clones the checkout's HEAD into a scratch folder (as a new user would get it: no data, no models, no MLflow
store), runs `python -m dvc repro` there with `--profile`'s settings (the committed params.yaml's profile by
default) and an empty embedded MLflow store, and records:
- the wall time of the whole `dvc repro` (dvc's own hashing and every stage's start-up included);
- each stage's time, read back from the MLflow runs the stages log (run start to end);
- the machine's speed just before and after, as a yardstick (a plain ResNet18 training step's images per second),
  since the same code's repro time drifts with this VM's speed;
- whether the clone reproduced the committed `dvc.lock`: every output md5 compared (the reproducibility check
  of README's "Reproducibility", here on the benchmark's own machine).

The report stage shows the committed JSON (a stage cannot time its own pipeline without making its outputs
differ from run to run, which would break the md5 check), so the times in a report are those of the commit
named in the JSON, measured on the machine named there.

    python benchmarks/repro_stage_times.py            # ~15 min for the cpu profile on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _tracking import benchmark_run

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "repro_stage_times.json"
BUDGET_SECONDS = 15 * 60  # issue 12 / 15: the cpu profile's whole repro on 2 quiet cores


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _output_md5s(lock: Path) -> dict[str, str]:
    stages = yaml.safe_load(lock.read_text())["stages"]
    return {out["path"]: out["md5"] for body in stages.values() for out in body.get("outs", [])}


def yardstick_images_per_s(steps: int = 8, warmup: int = 2, batch: int = 32, side: int = 64) -> float:
    """The machine's speed at this moment: a plain torchvision ResNet18 forward + backward + SGD step on fixed
    random (batch, 3, side, side) tensors on every CPU this process may use, images per second (median step).

    Taken before and after the repro, so that repro times of different runs can be read against the speed the
    machine had then (this VM's compute-bound stages have run ~10 % apart between runs of the same code)."""
    import torch
    import torchvision

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=16)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 3, side, side), torch.randint(0, 16, (batch,))
    seconds = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
    return batch / sorted(seconds)[len(seconds) // 2]


def stage_seconds(store: Path) -> dict[str, float]:
    """Seconds per stage run in the MLflow sqlite store (the pipeline's parent run and register's per-model
    child runs left out: they overlap the stage runs)."""
    with sqlite3.connect(store) as db:
        runs = db.execute(
            "SELECT r.start_time, r.end_time, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'nanomorph.stage' AND r.end_time IS NOT NULL ORDER BY r.start_time").fetchall()
    return {stage: round((end - start) / 1000, 1) for start, end, stage in runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="profile to run (default: params.yaml's)")
    parser.add_argument("--keep", type=Path, default=None, help="clone here and keep it (default: a temp dir)")
    args = parser.parse_args()

    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("note: the working tree has uncommitted changes; the clone times HEAD only", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.keep or Path(scratch) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
        params = yaml.safe_load((work / "params.yaml").read_text())
        profile = args.profile or params["profile"]
        if profile != params["profile"]:
            params["profile"] = profile
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        store = work / "mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "PYTHONPATH": str(work / "src"),
               # the stages' `python` is this interpreter (its environment), as for a user with the venv active
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        load_start = os.getloadavg()[0]
        yardstick_start = yardstick_images_per_s()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, capture_output=True,
                              text=True)
        total = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            print(f"dvc repro failed (exit {done.returncode})", file=sys.stderr)
            return 1
        yardstick_end = yardstick_images_per_s()
        committed, produced = _output_md5s(ROOT / "dvc.lock"), _output_md5s(work / "dvc.lock")
        differing = sorted(p for p in committed.keys() | produced.keys() if committed.get(p) != produced.get(p))
        stages = stage_seconds(store)
        log_bytes = len(done.stdout.encode()) + len(done.stderr.encode())
        ran = [line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage '")]
        skipped = [line.split("'")[1] for line in done.stdout.splitlines()
                   if line.startswith("Stage '") and "skipping" in line]

    import torch

    result = {
        "params": {"profile": profile, "commit": commit},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine(),
                    "load_average_1min_start": round(load_start, 2),
                    "load_average_1min_end": round(os.getloadavg()[0], 2),
                    # yardstick_images_per_s(): the machine's speed just before and just after the repro
                    "yardstick_images_per_s_start": round(yardstick_start, 2),
                    "yardstick_images_per_s_end": round(yardstick_end, 2)},
        "metrics": {"repro_seconds": round(total, 1), "stage_seconds": stages,
                    "stages_total_seconds": round(sum(stages.values()), 1),
                    "overhead_seconds": round(total - sum(stages.values()), 1),
                    "within_15_minutes": total <= BUDGET_SECONDS, "log_bytes": log_bytes,
                    # a stage whose outputs are all committed to git (and whose deps match) is up to date
                    "stages_run": ran, "stages_up_to_date": skipped,
                    "outputs_compared": len(committed), "outputs_differing": differing},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    with benchmark_run("repro_stage_times") as mlflow:
        mlflow.log_params(result["params"])
        mlflow.log_metrics({"repro_seconds": total, "log_bytes": log_bytes, "outputs_differing": len(differing),
                            "yardstick_images_per_s_start": yardstick_start,
                            "yardstick_images_per_s_end": yardstick_end,
                            **{f"stage_seconds.{k}": v for k, v in stages.items()}})
        mlflow.log_artifact(str(RESULT))
    print(json.dumps(result["metrics"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
