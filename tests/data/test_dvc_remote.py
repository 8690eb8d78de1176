"""Data versioning: `dvc push` to a local remote, lose cache and data, `dvc pull` brings back the same bytes."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def _run(args, cwd, env):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_then_pull_restores_identical_data(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run([*dvc, "init", "-q"], repo, env)

    rng = np.random.default_rng(0)
    data = repo / "data"
    for i in range(3):
        (data / "bundle" / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(data / "bundle" / "images" / f"b{i}.tif", rng.integers(0, 65535, (16, 16), dtype=np.uint16))
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(data / f"g{i}.png")
    before = _hashes(data)

    _run([*dvc, "add", "data"], repo, env)
    _run([*dvc, "remote", "add", "-d", "local", str(remote)], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "data"], repo, env)
    _run([*dvc, "push"], repo, env)
    assert any(p.is_file() for p in remote.rglob("*")), "the remote holds the pushed objects"

    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _run([*dvc, "pull"], repo, env)
    assert _hashes(data) == before
    status = _run([*dvc, "status"], repo, env)
    assert "up to date" in status.stdout.lower() or "up to date" in status.stderr.lower()
