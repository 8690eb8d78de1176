"""The GPU device script (benchmarks/gpu_paper_run.py, issue 18) end to end on CPU at micro size."""
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_script_runs_end_to_end_at_micro_size(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_paper_run", ROOT / "benchmarks" / "gpu_paper_run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "gpu.json"
    script.main(["--profile", "micro", "--pretrain-minutes", "0.01", "--methods", "simclr", "barlow_twins",
                 "--labels", "1", "8", "--segment-sizes", "4", "--out", str(out), "--no-mlflow"])
    result = json.loads(out.read_text())
    assert set(result["pretrain"]) == {"simclr", "barlow_twins"}
    for run in result["pretrain"].values():
        assert run["epochs"] >= 1 and run["steps"] >= 1 and run["images_per_s"] > 0
        assert run["step_tflop"] > 0 and run["peak_memory_gib"] > 0
        assert run["mfu"] is None  # no known peak on a CPU
    assert set(result["probe"]) == {"simclr", "barlow_twins", "random"}
    assert all(set(per_n) == {"n1", "n8"} and all(0 <= a <= 1 for a in per_n.values())
               for per_n in result["probe"].values())
    assert set(result["segment"]) == {"simclr", "barlow_twins", "random", "otsu", "local"}
    assert all(set(per_n) == {"n4"} for per_n in result["segment"].values())
    assert result["seconds"]["total"] > 0
