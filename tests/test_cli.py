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


def test_planned_command_says_so(capsys):
    assert main(["predict", "x.png"]) == 2
    assert "issue #8" in capsys.readouterr().err
