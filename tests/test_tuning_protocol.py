"""The tuning protocol (README, "How settings were chosen"): tuning data never overlaps what the report shows."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from nanomorph.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("tune_probe", "tune_segment")


def _script(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_tuning_scripts_refuse_the_reported_generator_seed(name):
    cfg = load_config(ROOT / "params.yaml")
    run = subprocess.run([sys.executable, f"benchmarks/{name}.py", "--data-seed", str(cfg.data.seed)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "tune on another generator seed" in run.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_tuning_defaults_are_disjoint_from_the_reported_seeds(name):
    cfg = load_config(ROOT / "params.yaml")
    defaults = _script(name).build_parser().parse_args([])
    assert defaults.data_seed != cfg.data.seed
    first = getattr(defaults, "split_offset", getattr(defaults, "seed", None))
    assert first >= max(cfg.probe.split_seeds, cfg.segment.seed + cfg.segment.seeds)
