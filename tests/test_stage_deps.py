"""dvc.yaml's code deps cannot go stale: every nanomorph module a stage imports lies under one of its deps.

Each stage module is imported in a fresh interpreter together with `nanomorph.tracking.runs` (every stage
imports it lazily when it opens its MLflow run); the files of all loaded `nanomorph` modules must each be a
listed dep or lie in a listed folder. A stage that starts importing a new module fails here until dvc.yaml
says so, so `dvc status` can never call a result current after that module changed.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LOADED = ("import sys, importlib; importlib.import_module(sys.argv[1]); import nanomorph.tracking.runs; "
          "print('\\n'.join(m.__file__ for n, m in sorted(sys.modules.items()) "
          "if n.split('.')[0] == 'nanomorph' and getattr(m, '__file__', None)))")


def _definition(stage: dict) -> dict:
    return stage["do"] if "foreach" in stage else stage


def _module(cmd: str) -> str:
    words = cmd.split()
    return words[words.index("-m") + 1]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_nanomorph_module_is_a_dep_of_its_stage(name):
    stage = _definition(STAGES[name])
    deps = [d for d in stage["deps"] if isinstance(d, str)]
    done = subprocess.run([sys.executable, "-c", LOADED, _module(stage["cmd"])], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    files = [Path(f).resolve() for f in done.stdout.split()]
    assert any(f.name == "_common.py" for f in files), "the import probe saw no stage code"
    missing = sorted(str(f.relative_to(ROOT)) for f in files if not _covered(str(f.relative_to(ROOT)), deps))
    assert not missing, f"dvc.yaml stage '{name}' imports modules it does not depend on: {missing}"


def test_the_coverage_rule_accepts_folders_and_files_only():
    assert _covered("src/nanomorph/data/io.py", ["src/nanomorph/data"])
    assert _covered("src/nanomorph/config.py", ["src/nanomorph/config.py"])
    assert not _covered("src/nanomorph/data_extra/io.py", ["src/nanomorph/data"])
    assert not _covered("src/nanomorph/config.py", ["src/nanomorph/data"])


def test_bytecode_and_jit_caches_beside_the_sources_are_not_stage_code():
    """Python writes __pycache__/*.pyc and numba its *.nbi / *.nbc kernels into the package's folders, which are
    stage deps: unless .dvcignore leaves them out, a user's first run changes every stage's code hash and
    `dvc status` calls the committed results stale."""
    from dvc.repo import Repo

    ignore = Repo(str(ROOT)).dvcignore
    probe = ROOT / "src" / "nanomorph" / "probe"
    for name in ("batched.cpython-311.pyc", "newton_kernels.fit_one-170.py311.nbi",
                 "newton_kernels.fit_one-170.py311.1.nbc"):
        assert ignore.is_ignored_file(str(probe / "__pycache__" / name)), name
    assert ignore.is_ignored_dir(str(probe / "__pycache__"))
    assert not ignore.is_ignored_file(str(probe / "batched.py"))
    assert not ignore.is_ignored_file(str(probe / "newton_kernels.py"))
