"""Every .pt nanomorph reads is loaded without running code from it; bad files are one clear line."""

from pathlib import Path

import pytest
import torch

from nanomorph.errors import NanomorphError
from nanomorph.models.encoder import load_encoder, random_encoder, save_encoder
from nanomorph.models.weights import UnsafeWeightsError, load_weights


class _Payload:
    """Unpickling this would create the marker file: what a malicious checkpoint does with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_file_is_refused_for_safety_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "simclr.pt"
    torch.save({"arch": "resnet18", "state_dict": _Payload(marker)}, evil)
    for load in (load_weights, load_encoder):
        with pytest.raises(UnsafeWeightsError) as err:
            load(evil)
        message = str(err.value)
        assert message.startswith(f"{evil}: refused for safety") and "\n" not in message
        assert "weights_only=False" not in message  # never suggest the unsafe way round
    assert not marker.exists()


@pytest.mark.parametrize("content, says", [
    (b"", "not a"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a PyTorch weights file"),  # an image renamed .pt
    (b'{"state_dict": {}}', "not a PyTorch weights file"),
])
def test_corrupt_files_are_one_line_naming_the_file(tmp_path, content, says):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(NanomorphError) as err:
        load_weights(path)
    assert str(err.value).startswith(f"{path}: {says}") and "\n" not in str(err.value)


def test_a_truncated_encoder_and_a_foreign_weights_file_are_one_line_errors(tmp_path):
    good = save_encoder(tmp_path / "enc.pt", random_encoder("resnet18", 0), {"method": "simclr"})
    encoder, meta = load_encoder(good)
    assert meta == {"method": "simclr"} and encoder.arch == "resnet18"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(NanomorphError, match=rf"^{truncated}: not a readable PyTorch weights file"):
        load_encoder(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(NanomorphError, match=rf"^{foreign}: not a nanomorph encoder file"):
        load_encoder(foreign)
    with pytest.raises(NanomorphError, match=r"no such file"):
        load_weights(tmp_path / "missing.pt")
