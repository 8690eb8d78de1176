"""Tests of the benchmarks' own helpers: benchmarks/ is a folder of scripts, put on the import path here."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
