"""One module per pipeline stage, each with a thin `main()` that dvc.yaml runs as
`python -m nanomorph.stages.<stage>`.

Importing this package (which both `python -m nanomorph.stages.<stage>` and `nanomorph <stage>` do before any
numerical library loads) pins the CPU kernels of torch, oneDNN, MKL and OpenBLAS to their AVX2 code paths.
Float results depend on the kernels' summation order, and each library otherwise picks the widest vector unit
of the machine (AVX2, AVX-512, AMX), so the committed dvc.lock would only reproduce on the CPU it came from.
AVX2 is what every x86-64 server of the last decade has. A variable already set in the environment wins;
NANOMORPH_NATIVE_KERNELS=1 leaves all four to the libraries (faster on AVX-512/AMX, not reproducible across
CPUs).
"""

import os

PORTABLE_KERNELS = {
    "ATEN_CPU_CAPABILITY": "avx2",   # torch's own vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",    # oneDNN: torch's CPU convolutions
    "MKL_CBWR": "AVX2",              # MKL conditional numerical reproducibility: torch's CPU matmuls
    "OPENBLAS_CORETYPE": "Haswell",  # OpenBLAS of numpy / scipy / scikit-learn
}

if os.environ.get("NANOMORPH_NATIVE_KERNELS") != "1":
    for _name, _value in PORTABLE_KERNELS.items():
        os.environ.setdefault(_name, _value)
