"""Downloads and the zenodo source against a real local HTTP server imitating Zenodo's records API."""

import hashlib
import io
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from nanomorph.data.archive import ArchiveLimits
from nanomorph.data.fetchers import Checksum, ChecksumMismatch, download_file, fetch_zenodo, record_files
from nanomorph.data.fetchers.http import get_json
from nanomorph.data.io import read_image, read_zenodo_label
from nanomorph.data.layout import TreeRules, find_nanowire_dataset
from nanomorph.errors import NanomorphError

LIMITS = ArchiveLimits(max_members=1000, max_member_bytes=10**7, max_total_bytes=10**8)
CLASSES = ("bundle", "dispersed", "network", "singular")
ZENODO_RULES = TreeRules(image_suffixes=(".tif", ".tiff"), mask_suffixes=(".png",))
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


def md5(data: bytes) -> Checksum:
    return Checksum("md5", hashlib.md5(data).hexdigest())


def tif_bytes(seed: int) -> tuple[bytes, np.ndarray]:
    image = np.random.default_rng(seed).integers(5000, 60000, (24, 24), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return buffer.getvalue(), image


def label_bytes(image: np.ndarray) -> tuple[bytes, np.ndarray]:
    wire = np.zeros(image.shape, dtype=bool)
    wire[10:13, :] = True
    rgb = np.repeat((image // 257).astype(np.uint8)[..., None], 3, axis=2)
    rgb[wire] = (0, 255, 0)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue(), wire


def nanowire_zip() -> tuple[bytes, dict]:
    """The record's assumed layout: <top>/<class>/<name>.tif with its label <name>.png beside it."""
    truth = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for k, name in enumerate(("bundle", "network", "dispersed")):
            for i in range(2):
                image_data, image = tif_bytes(10 * k + i)
                archive.writestr(f"2022-nanowire-morphology/{name}/{name}{i}.tif", image_data)
                truth[f"{name}{i}"] = image
                if i == 0:
                    label_data, wire = label_bytes(image)
                    archive.writestr(f"2022-nanowire-morphology/{name}/{name}{i}.png", label_data)
                    truth[f"{name}{i}_label"] = wire
        archive.writestr("2022-nanowire-morphology/README.txt", b"TEM images of peptide nanowires")
        archive.writestr("__MACOSX/2022-nanowire-morphology/bundle/._bundle0.tif", b"resource fork")
        archive.writestr("2022-nanowire-morphology/network/orphan.png", label_bytes(tif_bytes(99)[1])[0])
        archive.writestr("../../escape.tif", b"never written")
    return buffer.getvalue(), truth


# ----------------------------------------------------------------------------------------------------------
# download_file
# ----------------------------------------------------------------------------------------------------------


def test_503_then_success_is_retried_with_exponential_back_off(server, tmp_path, fast_policy):
    url = server.add("/f.bin", PAYLOAD, script=["503", "503"])
    sleeps, messages = [], []
    got = download_file(url, tmp_path / "f.bin", checksum=md5(PAYLOAD), size=len(PAYLOAD), policy=fast_policy,
                        sleep=sleeps.append, log=messages.append)
    assert got.action == "downloaded" and (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert len(server.requests_for("/f.bin")) == 3
    assert sleeps == [0.01, 0.02], "back-off doubles"
    assert "HTTP 503 Service Unavailable; retrying in 0.0 s (attempt 2 of 4)" in messages[0]


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path, fast_policy):
    url = server.add("/big.bin", PAYLOAD, script=["drop"])
    got = download_file(url, tmp_path / "big.bin", checksum=md5(PAYLOAD), size=len(PAYLOAD), policy=fast_policy,
                        sleep=lambda s: None, log=lambda m: None)
    assert got.path.read_bytes() == PAYLOAD
    first, second = server.requests_for("/big.bin")
    assert first.range is None and second.range == f"bytes={len(PAYLOAD) // 2}-", "only the missing half is fetched"
    assert not (tmp_path / "big.bin.part").exists()


def test_checksum_mismatch_is_rejected_and_kept_aside(server, tmp_path, fast_policy):
    url = server.add("/bad.bin", PAYLOAD)
    wrong = Checksum("md5", "0" * 32)
    with pytest.raises(ChecksumMismatch) as caught:
        download_file(url, tmp_path / "bad.bin", checksum=wrong, size=len(PAYLOAD), policy=fast_policy)
    message = str(caught.value)
    assert message.startswith("bad.bin: checksum mismatch (expected md5:000")
    assert f"got md5:{hashlib.md5(PAYLOAD).hexdigest()}" in message and "rejected/bad.bin" in message
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()
    assert (tmp_path / "rejected" / "bad.bin").read_bytes() == PAYLOAD


def test_verified_files_are_not_fetched_again_and_bad_ones_are_replaced(server, tmp_path, fast_policy):
    url = server.add("/f.bin", PAYLOAD)
    kwargs = dict(checksum=md5(PAYLOAD), size=len(PAYLOAD), policy=fast_policy, log=lambda m: None)
    assert download_file(url, tmp_path / "f.bin", **kwargs).action == "downloaded"
    assert download_file(url, tmp_path / "f.bin", **kwargs).action == "present"
    assert len(server.requests_for("/f.bin")) == 1
    (tmp_path / "f.bin").write_bytes(b"corrupted on disk")
    assert download_file(url, tmp_path / "f.bin", **kwargs).action == "downloaded"
    assert (tmp_path / "rejected" / "f.bin").read_bytes() == b"corrupted on disk"
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_final_http_errors_and_exhausted_retries(server, tmp_path, fast_policy):
    with pytest.raises(NanomorphError, match="/absent.bin: HTTP 404"):
        download_file(server.url + "/absent.bin", tmp_path / "a", checksum=None, size=None, policy=fast_policy)
    assert len(server.requests_for("/absent.bin")) == 1, "a 404 is not retried"
    url = server.add("/down.json", b"{}", script=["503"] * 10)
    with pytest.raises(NanomorphError, match="failed after 4 attempts; last error: HTTP 503"):
        get_json(url, fast_policy, sleep=lambda s: None, log=lambda m: None)


# ----------------------------------------------------------------------------------------------------------
# The zenodo source
# ----------------------------------------------------------------------------------------------------------


def _fetch(api, tmp_path, policy, **kwargs):
    return fetch_zenodo(api_url=api, record_id="6377141", patterns=("*",), download_dir=tmp_path / "downloads",
                        out_dir=tmp_path / "raw", classes=CLASSES, rules=ZENODO_RULES, policy=policy, limits=LIMITS,
                        log=lambda m: None, **kwargs)


def test_zenodo_record_to_canonical_layout(publish_record, server, tmp_path, fast_policy):
    archive, truth = nanowire_zip()
    api = publish_record("6377141", {"nanowires.zip": archive}, scripts={"nanowires.zip": ["503", "drop"]})
    records = _fetch(api, tmp_path, fast_policy)

    samples = find_nanowire_dataset(tmp_path / "raw", ["bundle", "dispersed", "network"])
    assert [s.image.name for s in samples] == ["bundle0.tif", "bundle1.tif", "dispersed0.tif", "dispersed1.tif",
                                               "network0.tif", "network1.tif"]
    for sample in samples:
        np.testing.assert_allclose(read_image(sample.image), truth[sample.image.stem] / 65535, atol=1e-6)
        if sample.image.stem.endswith("0"):
            np.testing.assert_array_equal(read_zenodo_label(sample.mask), truth[f"{sample.image.stem}_label"])
        else:
            assert sample.mask is None
    by_status = {}
    for r in records:
        by_status.setdefault(r.status, []).append(r)
    assert [r.role for r in by_status["downloaded"]] == ["download"]
    assert {r.source.split("/")[-1]: r.reason for r in by_status["unplaced"]} == {
        "README.txt": "not inside a class folder (one of bundle, dispersed, network, singular)",
        "._bundle0.tif": "hidden file or folder (skipped)",
        "orphan.png": "mask without a matching image (no image named 'orphan' in its folder or the images/ folder beside it)",
    }
    assert [(r.source, r.reason) for r in by_status["skipped"]] == [
        ("nanowires.zip:../../escape.tif", "path traversal ('..' component)")]
    assert [(r.label, r.reason) for r in by_status["empty"]] == [("singular", "no images found for class 'singular'")]
    assert not (tmp_path / "escape.tif").exists() and not (tmp_path / "downloads" / "escape.tif").exists()
    file_requests = server.requests_for("/api/records/6377141/files/nanowires.zip/content")
    assert [r.range for r in file_requests] == [None, None, f"bytes={len(archive) // 2}-"]

    again = _fetch(api, tmp_path, fast_policy)
    assert [r.status for r in again if r.role == "download"] == ["present"], "a verified download is reused"
    assert len(server.requests_for("/api/records/6377141/files/nanowires.zip/content")) == 3


def test_zenodo_checksum_mismatch_stops_before_anything_is_written(publish_record, tmp_path, fast_policy):
    archive, _ = nanowire_zip()
    api = publish_record("6377141", {"nanowires.zip": archive}, checksums={"nanowires.zip": "md5:" + "ab" * 16})
    with pytest.raises(ChecksumMismatch, match=r"^nanowires.zip: checksum mismatch \(expected md5:abab"):
        _fetch(api, tmp_path, fast_policy)
    assert (tmp_path / "downloads" / "zenodo-6377141" / "files" / "rejected" / "nanowires.zip").is_file()
    assert not (tmp_path / "raw").exists()


def test_record_listing_errors(publish_record, server, tmp_path, fast_policy):
    api = publish_record("1", {"../evil.zip": b"x"})
    with pytest.raises(NanomorphError, match=r"record 1 lists a file named '../evil.zip' \(path traversal"):
        record_files(api, "1", fast_policy)
    server.add_json("/api/records/2", {"id": 2, "files": []})
    with pytest.raises(NanomorphError, match="the record lists no files"):
        record_files(server.url + "/api", "2", fast_policy)
    api = publish_record("3", {"data.zip": b"x"})
    with pytest.raises(NanomorphError, match=r"no file matches data.zenodo.files \['\*.tar'\]"):
        fetch_zenodo(api_url=api, record_id="3", patterns=("*.tar",), download_dir=tmp_path, out_dir=tmp_path / "o",
                     classes=CLASSES, rules=ZENODO_RULES, policy=fast_policy, limits=LIMITS)
