import os
import subprocess
import sys

from nanomorph.cli import main


def test_unknown_command_is_one_clear_line(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_user_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nanomorph.cli", "probe", "--params", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"nanomorph probe: error: {tmp_path / 'none.yaml'}: no such parameters file (run from the project root)"]


def test_debug_keeps_the_one_line_and_adds_the_traceback(tmp_path):
    argv = [sys.executable, "-m", "nanomorph.cli", "--debug", "probe", "--params", str(tmp_path / "none.yaml")]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"nanomorph probe: error: {tmp_path / 'none.yaml'}: no such parameters file (run from the project root)"
    assert lines[1] == "Traceback (most recent call last):" and "ConfigError" in lines[-1]


def test_debug_reaches_a_stage_run_by_dvc_through_the_environment(tmp_path):
    import os

    env = {**os.environ, "NANOMORPH_DEBUG": "1"}
    done = subprocess.run([sys.executable, "-m", "nanomorph.stages.probe", "--params", "none.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "Traceback (most recent call last):" in done.stderr


def test_usage_lists_register_and_predict(capsys):
    assert main(["--help"]) == 0
    commands = capsys.readouterr().out
    assert "register" in commands and "predict" in commands


def test_predict_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG")
    cases = {
        ("predict", str(tmp_path / "absent")): f"{tmp_path / 'absent'}: no such file or folder",
        ("predict", str(image), "--model", "two@alias@s"):
            "'two@alias@s' is not a model reference (expected NAME@ALIAS, NAME/VERSION or NAME)",
        ("predict", str(image)): "no MLflow store at sqlite:///mlflow.db (mlflow.db does not exist); run from the "
                                 "project root, set MLFLOW_TRACKING_URI or pass --tracking-uri",
        ("predict", str(tmp_path / "empty_dir")): "no image files (png, jpg, jpeg, tif, tiff) in "
                                                  f"{tmp_path / 'empty_dir'}",
    }
    (tmp_path / "empty_dir").mkdir()
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        assert capsys.readouterr().err.strip().splitlines() == [f"nanomorph predict: error: {message}"]
    assert not (tmp_path / "mlflow.db").exists()  # the missing store was reported, not created


def test_predict_error_has_no_traceback_in_a_subprocess(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nanomorph.cli", "predict", "missing.png"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["nanomorph predict: error: missing.png: no such file or folder"]


def test_version_names_the_installed_package(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nanomorph {version('nanomorph')}"


def test_a_missing_path_with_undecodable_bytes_is_named_printably(tmp_path):
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/gone\xff.png")   # a surrogate-escaped name, as argv gives it
    done = subprocess.run([sys.executable, "-m", "nanomorph.cli", "predict", odd],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    message = f"nanomorph predict: error: {tmp_path}/gone%FF.png: no such file or folder"
    assert done.stderr.strip().splitlines() == [message]
