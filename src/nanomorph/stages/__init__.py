"""One module per pipeline stage, each with a thin `main()` that dvc.yaml runs as
`python -m nanomorph.stages.<stage>`.

Importing this package (which both `python -m nanomorph.stages.<stage>` and `nanomorph <stage>` do before any
numerical library loads) pins the CPU kernels of torch, oneDNN, MKL, OpenBLAS and numpy to their AVX2 code
paths. Float results depend on the kernels' summation order, and each library otherwise picks the widest vector unit
of the machine (AVX2, AVX-512, AMX), so the committed dvc.lock would only reproduce on the CPU it came from.
AVX2 is what every x86-64 server of the last decade has. A variable already set in the environment wins;
NANOMORPH_NATIVE_KERNELS=1 leaves all five to the libraries (faster on AVX-512/AMX, not reproducible across
CPUs).

It also chooses how torch's OpenMP threads wait at the end of each parallel region, from how busy the CPUs
this process may use are when it starts (`cpus_busy_with_others`). On quiet CPUs they spin, the libraries'
default and ~10 % faster. When other processes already keep at least half a CPU busy, spinning threads
take turns with the other process's threads on the same cores and every barrier waits for a descheduled
thread: the pretraining loop beside one busy process kept 0.25 of its alone speed spinning and 0.55 waiting
passively (OMP_WAIT_POLICY=PASSIVE; benchmarks/pretrain_throughput.py --busy). The wait policy
does not change which thread computes what, so results are bitwise the same either way (the number of
threads would change them, which is why it is not lowered). An OMP_WAIT_POLICY already set wins.
"""

import os

PORTABLE_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",   # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",    # oneDNN: torch's CPU convolutions
    "MKL_CBWR": "AVX2",              # MKL conditional numerical reproducibility: torch's CPU matmuls
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS of numpy / scipy / scikit-learn
    # numpy's own SIMD dispatch (ufunc loops, sorting): its AVX-512 targets off, so numpy 2.x runs X86_V3 (AVX2)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}

if os.environ.get("NANOMORPH_NATIVE_KERNELS") != "1":
    for _name, _value in PORTABLE_KERNELS.items():
        os.environ.setdefault(_name, _value)


# At least this much of a CPU (of those this process may run on) in use by other processes makes the OpenMP
# threads wait passively.
BUSY_CPU_THRESHOLD = 0.5


def cpus_busy_with_others(interval: float = 0.1) -> float:
    """CPUs' worth of time the CPUs this process may use spend busy over `interval` seconds, while this
    process sleeps (so the time is other processes'); 0.0 where the kernel's counters cannot be read."""
    import psutil  # imported here: only when a stage starts, before torch loads

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        percents = psutil.cpu_percent(interval=interval, percpu=True)
    except (OSError, RuntimeError):
        return 0.0
    if allowed is not None:
        percents = [percents[cpu] for cpu in allowed if cpu < len(percents)]
    return sum(percents) / 100.0


if "OMP_WAIT_POLICY" not in os.environ and cpus_busy_with_others() >= BUSY_CPU_THRESHOLD:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
