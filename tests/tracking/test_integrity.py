"""The sha256 manifest of a model's files: every kind of change is named, nothing else is refused."""

from __future__ import annotations

import pytest

from nanomorph.tracking.integrity import ModelIntegrityError, check_digests, file_digests


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "model"
    (root / "code" / "pkg").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "code" / "pkg" / "model_code.py").write_text("def predict(x):\n    return x\n")
    (root / "weights.pt").write_bytes(bytes(range(256)) * 4096)  # > one read chunk
    return root


def test_manifest_lists_every_file_by_relative_path(model_dir):
    digests = file_digests(model_dir)
    assert list(digests) == ["MLmodel", "code/pkg/model_code.py", "weights.pt"]
    assert all(len(d) == 64 for d in digests.values())
    check_digests(model_dir, digests, "model m/1")  # unchanged: no error


@pytest.mark.parametrize("change, message", [
    (lambda root: (root / "code/pkg/model_code.py").write_text("import os\nos.system('id')\n"),
     "model m/1: code/pkg/model_code.py has changed since registration"),
    (lambda root: (root / "weights.pt").unlink(), "model m/1: weights.pt was registered but is missing"),
    (lambda root: (root / "code/pkg/extra.py").write_text("x = 1\n"),
     "model m/1: code/pkg/extra.py was not part of the registered model"),
])
def test_a_changed_added_or_removed_file_is_named(model_dir, change, message):
    digests = file_digests(model_dir)
    change(model_dir)
    with pytest.raises(ModelIntegrityError) as raised:
        check_digests(model_dir, digests, "model m/1")
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
