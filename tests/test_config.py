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


def _with(tmp_path, edits: dict) -> Path:
    """The shipped params.yaml with `edits` ({"section.key" or "section.scale.cpu.key": value}) applied."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in edits.items():
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("key, value, says", [
    ("pretrain.scale.cpu.epochs", -5, "greater than 0"),
    ("pretrain.scale.cpu.lr", "fast", "valid number"),
    ("pretrain.checkpoint_every", "often", "valid integer"),
    ("validate.min_std", "low", "valid number"),
    ("data.scale.cpu.images_per_class", "ten", "valid integer"),
    ("data.scale.cpu.images_per_class", -3, "greater than 0"),
    ("pretrain.methods", ["simclr", "byol"], "'simclr' or 'barlow_twins'"),
    ("probe.test_fraction", 1.5, "less than 1"),
    ("segment.loss", "focal", "'dice' or 'dice+bce'"),
    ("data.http.retries", -1, "greater than or equal to 0"),
    ("pretrain.flip_p", 2, "less than or equal to 1"),
    ("data.source", "s3", "'synthetic', 'zenodo' or 'folder'"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_value(tmp_path, key, value, says):
    with pytest.raises(ConfigError) as err:
        load_config(_with(tmp_path, {key: value}))
    message = str(err.value)
    shown_key = key.replace(".scale.cpu", "")
    assert message.count("\n") == 0, message
    shown_value = repr(value[-1]) if isinstance(value, list) else repr(value)  # a list: its bad item, [index]
    assert message.startswith(f"params.yaml: {shown_key}") and shown_value in message and says in message, message


def test_every_bad_value_is_reported_at_once_one_line_each(tmp_path):
    path = _with(tmp_path, {"pretrain.scale.cpu.lr": "fast", "probe.C": -1, "segment.scale.cpu.seeds": 0})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert [line.split(" = ")[0] for line in lines] == [
        "params.yaml: pretrain.lr", "params.yaml: probe.C", "params.yaml: segment.seeds"]


def test_numbers_yaml_reads_as_text_are_accepted_and_unknown_nested_keys_refused(tmp_path):
    cfg = load_config(_with(tmp_path, {"pretrain.scale.cpu.lr": "1e-3"}))  # YAML 1.1 reads 1e-3 as a string
    assert cfg.pretrain.lr == 1e-3
    with pytest.raises(ConfigError, match=r"data.http has unknown keys \['retry'\]"):
        load_config(_with(tmp_path, {"data.http.retry": 3}))


def test_the_predict_quality_gate_uses_the_shipped_validate_thresholds():
    from nanomorph.data.validation import QualityRules

    v = load_config(ROOT / "params.yaml").validate
    assert QualityRules() == QualityRules(v.min_side, v.min_std, v.max_saturated_fraction)
