from pathlib import Path

import pytest
import yaml

from nanomorph.config import PROFILES, load_config
from nanomorph.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_of_the_shipped_params_resolves(profile):
    cfg = load_config(ROOT / "params.yaml", profile=profile)
    assert cfg.profile == profile
    assert cfg.pretrain.temperature == 0.1 and cfg.pretrain.lambd == 0.005
    lo, hi = cfg.pretrain.crop_side
    assert 0 < lo <= hi <= 1


def test_paper_profile_uses_the_paper_sizes():
    cfg = load_config(ROOT / "params.yaml", profile="paper")
    assert (cfg.pretrain.arch, cfg.pretrain.image_size, cfg.pretrain.batch_size, cfg.pretrain.epochs) == (
        "resnet50", 224, 64, 200)
    assert cfg.pretrain.crop_side == (0.25, 0.5)  # the paper's 25-50 % of the side
    assert cfg.probe.labels_per_class == (1, 2, 4, 8, 16, 32, 80) and cfg.probe.split_seeds == 20
    assert [cfg.segment.epochs_for(n) for n in cfg.segment.train_sizes] == [120, 120, 120, 60, 40, 30, 20]


def test_unknown_profile_and_missing_keys_are_clear_errors(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "huge"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        load_config(tmp_path / "p.yaml")
    raw["profile"] = "cpu"
    del raw["probe"]["C"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"section 'probe' lacks \['C'\]"):
        load_config(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match="no such parameters file"):
        load_config(tmp_path / "absent.yaml")


def test_params_hash_changes_with_any_value(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw))
    raw["probe"]["C"] = 2.0
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "a.yaml").params_hash != load_config(tmp_path / "b.yaml").params_hash
