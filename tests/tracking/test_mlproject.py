"""MLproject mirrors dvc.yaml: one entry point per stage, running the same module with the same parameters."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_dvc_stage_has_an_entry_point_running_the_same_module():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entry_points = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    assert "main" in entry_points and "dvc exp run" in entry_points["main"]["command"]
    for name, stage in stages.items():
        cmd = stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]
        module = cmd.split()[2]  # python -m <module> ...
        assert name in entry_points, f"no MLproject entry point for dvc stage '{name}'"
        entry = entry_points[name]
        command = entry["command"]
        # `mlflow run` exports the id of its own run; the stage must open its own runs instead (see MLproject).
        assert command.startswith("env -u MLFLOW_RUN_ID python -m ")
        assert command.split()[5] == module
        for parameter, flag in (("profile", "--profile"), ("params_file", "--params")):
            assert parameter in entry["parameters"] and f"{flag} {{{parameter}}}" in command
        placeholders = {p for p in entry["parameters"]}
        assert all(f"{{{p}}}" in command for p in placeholders)
