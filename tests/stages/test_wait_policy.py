"""A stage started beside a busy process lets torch's OpenMP threads wait passively, without changing results."""

import json
import os
import subprocess
import sys
import time

from nanomorph.stages import BUSY_CPU_THRESHOLD, cpus_busy_with_others

PROBE = "import json, os, nanomorph.stages; print(json.dumps(os.environ.get('OMP_WAIT_POLICY')))"

# A few SGD steps of a small conv net on 2 threads; prints a digest of the weights.
TRAIN = """
import hashlib, os, nanomorph.stages, torch
torch.set_num_threads(2)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 16, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(4))
x, y = torch.rand(32, 1, 48, 48), torch.randint(0, 4, (32,))
net(x)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
for _ in range(3):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest())
"""


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(changes)
    return env


def _run(code: str, **env_changes) -> str:
    return subprocess.run([sys.executable, "-c", code], env=_env(**env_changes), capture_output=True, text=True,
                          check=True).stdout.strip()


def _spinner() -> subprocess.Popen:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # running, past its start-up
    return spinner


def test_beside_a_busy_process_threads_wait_passively_and_a_set_policy_wins():
    spinner = _spinner()
    try:
        assert cpus_busy_with_others() >= BUSY_CPU_THRESHOLD
        assert json.loads(_run(PROBE)) == "PASSIVE"
        assert json.loads(_run(PROBE, OMP_WAIT_POLICY="ACTIVE")) == "ACTIVE"
    finally:
        spinner.kill()
        spinner.wait()


def test_the_wait_policy_does_not_change_the_arithmetic():
    passive, active = _run(TRAIN, OMP_WAIT_POLICY="PASSIVE"), _run(TRAIN, OMP_WAIT_POLICY="ACTIVE")
    assert len(passive) == 64 and passive == active
