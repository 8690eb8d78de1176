"""Importing nanomorph.stages pins the numerical libraries' CPU kernels, so dvc.lock does not depend on the CPU."""

import json
import os
import subprocess
import sys

import pytest

PROBE = ("import json, os, nanomorph.stages, torch; from numpy._core._multiarray_umath import __cpu_features__; "
         "print(json.dumps({'capability': torch.backends.cpu.get_cpu_capability(), "
         "'numpy_avx512': __cpu_features__['X86_V4'], "
         "'env': {k: os.environ.get(k) for k in nanomorph.stages.PORTABLE_KERNELS}}))")


def _stage_process(**env_changes) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in
           ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES",
            "NANOMORPH_NATIVE_KERNELS")}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _has_avx2() -> bool:
    try:
        return " avx2" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx2(), reason="needs an x86-64 CPU with AVX2 (/proc/cpuinfo)")
def test_a_stage_process_runs_torch_on_avx2_kernels_whatever_the_cpu_offers():
    seen = _stage_process()
    assert seen["capability"] == "AVX2"
    assert seen["numpy_avx512"] is False  # numpy's dispatch honours the pin (on AVX-512 CPUs it would be True)
    assert seen["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                           "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


def test_the_environment_wins_and_native_kernels_can_be_asked_for():
    assert _stage_process(ATEN_CPU_CAPABILITY="default")["capability"] == "DEFAULT"
    native = _stage_process(NANOMORPH_NATIVE_KERNELS="1")
    assert all(value is None for value in native["env"].values())
