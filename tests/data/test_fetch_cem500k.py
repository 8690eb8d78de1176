"""The cem500k source: a seeded sample from an archive or a file listing, served by a local HTTP server."""

import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from nanomorph.data.archive import ArchiveLimits
from nanomorph.data.fetchers import ChecksumMismatch, fetch_cem500k
from nanomorph.data.fetchers.cem500k import parse_listing, sample_indices
from nanomorph.data.io import read_image
from nanomorph.data.layout import find_images
from nanomorph.errors import NanomorphError

LIMITS = ArchiveLimits(max_members=10_000, max_member_bytes=10**7, max_total_bytes=10**8)


def png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def cem_zip(n: int) -> bytes:
    """CEM500K-like archive: PNG patches in per-source-dataset folders, plus files that are not images."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(n):
            archive.writestr(f"cem500k/dataset{i % 3}/patch_{i:04d}.png", png_bytes(i))
        archive.writestr("cem500k/README.md", b"CEM500K")
        archive.writestr("cem500k/._patch_0000.png", b"resource fork")
    return buffer.getvalue()


def _fetch(url, tmp_path, policy, count, seed, out="generic", checksum=None):
    return fetch_cem500k(url=url, checksum=checksum, count=count, seed=seed, download_dir=tmp_path / "downloads",
                         out_dir=tmp_path / out, policy=policy, limits=LIMITS, log=lambda m: None)


def test_archive_sample_is_seeded_and_reproducible(server, tmp_path, fast_policy):
    body = cem_zip(30)
    url = server.add("/empiar/10592/cem500k.zip", body)
    checksum = "md5:" + hashlib.md5(body).hexdigest()
    records = _fetch(url, tmp_path, fast_policy, count=8, seed=0, out="a", checksum=checksum)
    first = [p.name for p in find_images(tmp_path / "a")]
    assert len(first) == 8 and all(name.startswith("cem500k__dataset") for name in first)
    assert [r.status for r in records].count("placed") == 8
    _fetch(url, tmp_path, fast_policy, count=8, seed=0, out="b", checksum=checksum)
    assert [p.name for p in find_images(tmp_path / "b")] == first, "same url, count and seed: same files"
    _fetch(url, tmp_path, fast_policy, count=8, seed=1, out="c", checksum=checksum)
    assert [p.name for p in find_images(tmp_path / "c")] != first
    assert len(server.requests_for("/empiar/10592/cem500k.zip")) == 1, "the archive is downloaded once"
    index = int(first[0].split("_")[-1].split(".")[0])
    assert (tmp_path / "a" / first[0]).read_bytes() == png_bytes(index), "members arrive byte for byte"


def test_asking_for_more_than_available_takes_all_and_says_so(server, tmp_path, fast_policy):
    url = server.add("/cem500k.zip", cem_zip(5))
    messages = []
    fetch_cem500k(url=url, checksum=None, count=832, seed=0, download_dir=tmp_path / "d", out_dir=tmp_path / "g",
                  policy=fast_policy, limits=LIMITS, log=messages.append)
    assert len(find_images(tmp_path / "g")) == 5
    assert any("no checksum configured" in m for m in messages)
    assert any("asked for 832 images but only 5 are available; taking all 5" in m for m in messages)


def test_listing_with_checksums(server, tmp_path, fast_policy):
    lines = ["# CEM500K sample listing", ""]
    for i in range(12):
        body = png_bytes(100 + i)
        server.add(f"/cem/img_{i:02d}.png", body)
        lines.append(f"img_{i:02d}.png md5:{hashlib.md5(body).hexdigest()}")
    url = server.add("/cem/listing.txt", "\n".join(lines).encode())
    records = _fetch(url, tmp_path, fast_policy, count=4, seed=3)
    chosen = sorted(p.name for p in find_images(tmp_path / "generic"))
    expected = sorted(f"img_{i:02d}.png" for i in sample_indices(12, 4, 3))
    assert chosen == expected
    assert sum(r.role == "download" and r.status == "downloaded" for r in records) == 5  # listing + 4 images


def test_listing_entry_with_a_wrong_checksum_fails_clearly(server, tmp_path, fast_policy):
    server.add("/cem/a.png", png_bytes(1))
    url = server.add("/cem/list.csv", f"a.png,{'0' * 32}\n".encode())
    with pytest.raises(ChecksumMismatch, match=r"000000_a.png: checksum mismatch"):
        _fetch(url, tmp_path, fast_policy, count=1, seed=0)
    assert not (tmp_path / "generic").exists()


def test_missing_url_and_bad_listing(tmp_path):
    with pytest.raises(NanomorphError, match="data.cem500k.url is not set"):
        fetch_cem500k(url=None, checksum=None, count=1, seed=0, download_dir=tmp_path, out_dir=tmp_path / "g",
                      policy=None, limits=LIMITS)
    listing = tmp_path / "l.txt"
    listing.write_text("http://x/a.png md5:abc extra\n")
    with pytest.raises(NanomorphError, match="line 1: expected '<url> \\[checksum\\]'"):
        parse_listing(listing, "http://x/")


def test_real_cem500k_examples(server, tmp_path, fast_policy, shared_data):
    """The real CEM500K example patches, zipped and served, sample and decode like the archive would."""
    images = find_images(shared_data / "cem500k-examples" / "images")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in images:
            archive.write(path, f"cem500k/{path.name}")
    url = server.add("/cem500k.zip", buffer.getvalue())
    _fetch(url, tmp_path, fast_policy, count=6, seed=0)
    sampled = find_images(tmp_path / "generic")
    assert len(sampled) == 6
    originals = {p.name: p for p in images}
    for path in sampled:
        np.testing.assert_array_equal(read_image(path), read_image(originals[path.name.removeprefix("cem500k__")]))
