import json

import numpy as np
import pytest
import torch

from nanomorph.models.encoder import random_encoder
from nanomorph.probe.cache import (
    FeatureCache, encoder_fingerprint, image_set_fingerprint, load_indexed_features,
)
from nanomorph.probe.features import extract_features

SIZE = 32


@pytest.fixture(scope="module")
def encoder():
    return random_encoder("resnet18", seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((6, SIZE, SIZE), dtype=np.float32)


class Loader:
    """Counts how often the images had to be decoded (only on a cache miss)."""

    def __init__(self, images):
        self.images, self.calls = images, 0

    def __call__(self):
        self.calls += 1
        return self.images


def _get(cache, name, encoder, images, loader, size=SIZE, image_set="set-a"):
    return cache.get_or_extract(name, 0, encoder, size, image_set, len(images), loader)


def test_second_lookup_reuses_the_features_without_decoding(tmp_path, encoder, images):
    cache, loader = FeatureCache(tmp_path), Loader(images)
    first, entry = _get(cache, "enc", encoder, images, loader)
    again, entry2 = _get(cache, "enc", encoder, images, loader)
    assert (entry.hit, entry2.hit, loader.calls) == (False, True, 1)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, extract_features(encoder, images), rtol=1e-5, atol=1e-6)


def test_key_changes_with_weights_resolution_and_image_set(tmp_path, encoder, images):
    cache, loader = FeatureCache(tmp_path), Loader(images)
    _, base = _get(cache, "enc", encoder, images, loader)
    changed = random_encoder("resnet18", seed=0)
    with torch.no_grad():
        changed.trunk.layer4[1].bn2.running_mean += 0.5  # BatchNorm statistics are part of the content
    _, other_weights = _get(cache, "enc", changed, images, loader)
    _, other_set = _get(cache, "enc", encoder, images, loader, image_set="set-b")
    small = images[:, : SIZE // 2, : SIZE // 2].copy()
    _, other_size = _get(cache, "enc", encoder, small, Loader(small), size=SIZE // 2)
    keys = {base.key, other_weights.key, other_set.key, other_size.key}
    assert len(keys) == 4 and not (other_weights.hit or other_set.hit or other_size.hit)
    # The same weights in a fresh object (as from re-loading an unchanged file) hit the cache.
    _, same = _get(cache, "enc", random_encoder("resnet18", seed=0), images, loader)
    assert same.hit and same.key == base.key


def test_fingerprints():
    a, b = random_encoder("resnet18", 0), random_encoder("resnet18", 1)
    assert encoder_fingerprint(a) == encoder_fingerprint(random_encoder("resnet18", 0))
    assert encoder_fingerprint(a) != encoder_fingerprint(b)
    assert image_set_fingerprint(["x", "y"]) != image_set_fingerprint(["y", "x"])  # row order matters
    with pytest.raises(ValueError):
        image_set_fingerprint([])


def test_corrupt_or_mismatching_entries_are_recomputed(tmp_path, encoder, images):
    cache, loader = FeatureCache(tmp_path), Loader(images)
    features, entry = _get(cache, "enc", encoder, images, loader)
    sidecar = tmp_path / entry.file.replace(".npy", ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "key": "something else"}))
    _, again = _get(cache, "enc", encoder, images, loader)
    assert not again.hit and loader.calls == 2
    (tmp_path / entry.file).write_bytes(b"not a numpy file")
    recomputed, third = _get(cache, "enc", encoder, images, loader)
    assert not third.hit and loader.calls == 3
    np.testing.assert_array_equal(recomputed, features)


def test_index_prunes_stale_entries_and_loads_back(tmp_path, encoder, images):
    cache, loader = FeatureCache(tmp_path), Loader(images)
    _, old = _get(cache, "enc", encoder, images, loader, image_set="old-set")
    features, current = _get(cache, "enc", encoder, images, loader)
    cache.write_index([current])
    assert not (tmp_path / old.file).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [current.file, current.file.replace(".npy", ".json"), "index.json"])
    loaded = load_indexed_features(tmp_path)
    assert list(loaded) == [("enc", 0)]
    np.testing.assert_array_equal(loaded[("enc", 0)], features)


def test_wrong_image_stack_is_refused(tmp_path, encoder, images):
    with pytest.raises(ValueError, match="expected 7 images"):
        FeatureCache(tmp_path).get_or_extract("enc", 0, encoder, SIZE, "s", 7, Loader(images))


def test_key_and_features_change_with_the_dihedral_readout(tmp_path, encoder, images):
    cache = FeatureCache(tmp_path)
    plain, base = cache.get_or_extract("enc", 0, encoder, SIZE, "set-a", len(images), Loader(images))
    averaged, turned = cache.get_or_extract("enc", 0, encoder, SIZE, "set-a", len(images), Loader(images),
                                            dihedral=True)
    assert turned.key != base.key and not turned.hit
    assert not np.allclose(plain, averaged)
    again, entry = cache.get_or_extract("enc", 0, encoder, SIZE, "set-a", len(images), Loader(images), dihedral=True)
    assert entry.hit and np.array_equal(again, averaged)


def test_key_records_where_the_features_were_computed():
    # CPU and CUDA features (TF32 or not) differ beyond float32 rounding: they must not share an entry (issue 18).
    parts = {d: FeatureCache.key("enc", SIZE, "set-a", device=d) for d in ("cpu", "cuda", torch.device("cpu"))}
    assert parts["cpu"]["arithmetic"] == "cpu" and parts["cpu"]["key"] == parts[torch.device("cpu")]["key"]
    assert parts["cuda"]["arithmetic"] in ("cuda-fp32", "cuda-tf32") and parts["cuda"]["key"] != parts["cpu"]["key"]
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        fp32 = FeatureCache.key("enc", SIZE, "set-a", device="cuda")
        torch.backends.cudnn.allow_tf32 = True
        tf32 = FeatureCache.key("enc", SIZE, "set-a", device="cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert (fp32["arithmetic"], tf32["arithmetic"]) == ("cuda-fp32", "cuda-tf32") and fp32["key"] != tf32["key"]
