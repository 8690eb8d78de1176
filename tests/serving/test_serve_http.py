"""`nanomorph serve` (verified files, then `mlflow models serve`) answers real HTTP requests with the registered
champion classifier, and refuses requests for files outside its allowed folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSIFIER, free_port, wait_ready

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_curl(port: int) -> str:
    """README's curl request to the served model (its lines from `curl` to the first without a trailing
    backslash), pointed at `port` instead of the documented 5001."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("curl ") and "/invocations" in line)
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    command = "\n".join(lines[start : end + 1])
    assert "127.0.0.1:5001" in command, command
    return command.replace("127.0.0.1:5001", f"127.0.0.1:{port}")


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def _post_status(url: str, payload: dict) -> tuple[int, str]:
    """(HTTP status, body) of a request the server may refuse."""
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"{url}/invocations", data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"}, method="POST"), timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_served_champion_returns_class_probabilities(tiny_registry, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    # mlflow execs `uvicorn` by name: find this interpreter's one even when the venv is not activated.
    env = {**tiny_registry.env, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    # Files may be named only under the inputs folder (without this variable no path row is read at all).
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    for path in tiny_registry.files:
        (allowed / path.name).write_bytes(path.read_bytes())
    (allowed / "broken.png").write_bytes(b"not a PNG")
    env["NANOMORPH_SERVING_PATH_ROOT"] = str(allowed)
    temp = tmp_path / "temp"  # where the server's verified copy of the model goes
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    with open(log, "w") as sink:
        # Own session: the server starts uvicorn workers; the whole group is stopped at the end.
        server = subprocess.Popen(
            [sys.executable, "-m", "nanomorph.cli", "serve", f"{CLASSIFIER}@champion", "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tiny_registry.root, start_new_session=True)
    try:
        wait_ready(url, server, log)
        copies_while_serving = sorted(p.name for p in temp.glob("nanomorph-*"))
        data = [[str(allowed / path.name)] for path in tiny_registry.files[:-1]] + [[tiny_registry.files[-1].name]]
        by_path = _post(url, {"dataframe_split": {"columns": ["path"], "data": data}})
        inline = _post(url, {"dataframe_records": [{"image": tiny_registry.file_images[0].tolist()}],
                             "params": {"return_embeddings": True}})
        readme = subprocess.run(["bash", "-c", _readme_curl(port)], capture_output=True, text=True, timeout=120)
        secret = tiny_registry.root / "mlflow.db"  # a file the server can read, outside the allowed folder
        (allowed.parent / "mlflow.db").write_bytes(b"")  # what ../mlflow.db would open
        refusals = [_post_status(url, {"dataframe_split": {"columns": ["path"], "data": [[value]]}})
                    for value in (str(secret), "../mlflow.db", str(allowed / ".." / "mlflow.db"), "broken.png")]
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone when it failed to start
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # The verified copy served from, and deleted once the server stopped (an exec'd server left it behind).
    assert len(copies_while_serving) == 1 and copies_while_serving[0].startswith(f"nanomorph-{CLASSIFIER}-v")
    assert not list(temp.glob("nanomorph-*"))
    classes = [str(c) for c in tiny_registry.probe.classes_]
    rows = by_path["predictions"]
    assert len(rows) == len(tiny_registry.files)
    for row in rows:
        probs = np.array([row[f"prob_{c}"] for c in classes])
        assert probs.sum() == pytest.approx(1.0) and (probs >= 0).all()
        assert row["class"] == classes[int(probs.argmax())]
    assert readme.returncode == 0, readme.stderr
    (documented,) = json.loads(readme.stdout)["predictions"]  # README's example answers as README says
    assert documented["class"] in classes
    assert sum(documented[f"prob_{c}"] for c in classes) == pytest.approx(1.0, abs=1e-6)
    first = inline["predictions"][0]
    assert first["class"] == rows[0]["class"]
    assert first["prob_network"] == pytest.approx(rows[0]["prob_network"], abs=1e-6)
    assert len(first["embedding"]) == tiny_registry.encoder.out_dim

    for (status, body), expected in zip(refusals, ["outside the folder"] * 3 + ["broken.png"]):
        assert status == 400 and expected in body, body[-500:]
        answer = json.loads(body)  # one JSON object on one line, without the server's traceback
        assert "\n" not in body and "stack_trace" not in answer and "Traceback" not in body
