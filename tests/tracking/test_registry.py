import mlflow
import pytest

from nanomorph.errors import NanomorphError
from nanomorph.tracking.registry import (
    CHALLENGER, CHAMPION, CONTENT_TAG, ModelRef, apply_decision, parse_model_ref, promotion_decision,
    register_version, registry_state, resolve, store_identity, version_by_alias, version_with_content,
)


def test_model_references():
    assert parse_model_ref("nanomorph-classifier@champion") == ModelRef("nanomorph-classifier", alias="champion")
    assert parse_model_ref("seg/3") == ModelRef("seg", version="3")
    assert parse_model_ref("seg") == ModelRef("seg", alias="champion")
    assert parse_model_ref("seg@challenger").uri == "models:/seg@challenger"
    assert parse_model_ref("seg/3").uri == "models:/seg/3"
    for bad in ("", "a@b@c", "a/b", "@x", "a@"):
        with pytest.raises(NanomorphError, match="is not a model reference"):
            parse_model_ref(bad)


def test_promotion_rule():
    first = promotion_decision("accuracy", 0.5, None, None, margin=0.01)
    assert (first.alias, first.promoted) == (CHAMPION, True) and "no champion" in first.reason
    better = promotion_decision("accuracy", 0.80, "3", 0.78, margin=0.01)
    assert (better.alias, better.promoted) == (CHAMPION, True)
    assert "v3" in better.reason and "+0.0200" in better.reason
    within = promotion_decision("accuracy", 0.785, "3", 0.78, margin=0.01)
    assert (within.alias, within.promoted) == (CHALLENGER, False)
    assert promotion_decision("dice", 0.7, "1", 0.7, margin=0.0).alias == CHALLENGER  # a tie does not win
    assert promotion_decision("dice", 0.6, "1", 0.7, margin=0.0).alias == CHALLENGER
    with pytest.raises(ValueError, match="margin"):
        promotion_decision("dice", 0.6, "1", 0.7, margin=-0.1)


def test_aliases_move_between_versions(tmp_path):
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    assert version_by_alias(client, "m", CHAMPION) is None  # no such model
    with pytest.raises(NanomorphError, match="model 'm@champion' not found in the registry at"):
        resolve(client, ModelRef("m", alias=CHAMPION), uri)

    (tmp_path / "v").mkdir()
    v1 = register_version((tmp_path / "v").as_uri(), "m", {"git_commit": "abc", "eval.accuracy": 0.5})
    assert version_by_alias(client, "m", CHAMPION) is None  # model exists, alias does not
    # Without permission to promote, even a "champion" decision only makes a challenger, and the champion hint
    # names `nanomorph promote`.
    assert apply_decision(client, "m", v1.version, promotion_decision("accuracy", 0.5, None, None, 0.01),
                          allow_promotion=False) == CHALLENGER
    assert registry_state(client, "m")["aliases"] == {CHALLENGER: "1"}
    with pytest.raises(NanomorphError, match="nanomorph promote m"):
        resolve(client, ModelRef("m", alias=CHAMPION), uri)
    assert apply_decision(client, "m", v1.version, promotion_decision("accuracy", 0.5, None, None, 0.01),
                          allow_promotion=True) == CHAMPION
    v2 = register_version((tmp_path / "v").as_uri(), "m", {"git_commit": "def"})
    apply_decision(client, "m", v2.version, promotion_decision("accuracy", 0.505, v1.version, 0.5, 0.01),
                   allow_promotion=True)
    assert registry_state(client, "m")["aliases"] == {CHALLENGER: "2", CHAMPION: "1"}
    v3 = register_version((tmp_path / "v").as_uri(), "m", {})
    apply_decision(client, "m", v3.version, promotion_decision("accuracy", 0.6, v1.version, 0.5, 0.01),
                   allow_promotion=True)

    state = registry_state(client, "m")
    assert state["aliases"] == {CHALLENGER: "2", CHAMPION: "3"}  # champion moved, v1 keeps no alias
    assert [v["aliases"] for v in state["versions"]] == [[], [CHALLENGER], [CHAMPION]]
    assert state["versions"][0]["tags"]["git_commit"] == "abc"
    assert state["versions"][0]["tags"]["eval.accuracy"] == "0.5"
    assert state["versions"][2]["tags"]["nanomorph.decision"] == CHAMPION
    assert state["versions"][2]["tags"]["nanomorph.replaced_champion"] == "1"
    assert str(resolve(client, ModelRef("m", alias=CHAMPION), uri).version) == "3"
    assert str(resolve(client, ModelRef("m", version="2"), uri).version) == "2"
    with pytest.raises(NanomorphError, match="model 'm/9' not found"):
        resolve(client, ModelRef("m", version="9"), uri)
    assert registry_state(client, "absent") == {"aliases": {}, "versions": []}


def test_store_identity_names_the_store_without_credentials():
    assert store_identity("http://writer:secret@10.0.0.5:5000/") == {"uri": "http://10.0.0.5:5000/",
                                                                     "kind": "shared server"}
    assert store_identity("sqlite:///mlflow.db") == {"uri": "sqlite:///mlflow.db",
                                                     "kind": "local store of this checkout"}


def test_store_identity_names_a_store_inside_the_project_relative_to_it(tmp_path):
    project = tmp_path / "clone"
    (project / "mlruns").mkdir(parents=True)
    local = "local store of this checkout"
    assert store_identity(f"sqlite:///{project / 'mlflow.db'}", project) == {"uri": "sqlite:///mlflow.db", "kind": local}
    assert store_identity((project / "mlruns").as_uri(), project) == {"uri": "mlruns", "kind": local}
    outside = f"sqlite:///{tmp_path / 'shared.db'}"
    assert store_identity(outside, project) == {"uri": outside, "kind": local}


def test_version_with_content_finds_the_newest_same_content(tmp_path):
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    assert version_with_content(client, "m", "abc") is None  # no such model
    (tmp_path / "v").mkdir()
    for content in ("abc", "def", "abc"):
        register_version((tmp_path / "v").as_uri(), "m", {CONTENT_TAG: content})
    assert version_with_content(client, "m", "abc").version in (3, "3")
    assert version_with_content(client, "m", "def").version in (2, "2")
    assert version_with_content(client, "m", "xyz") is None
