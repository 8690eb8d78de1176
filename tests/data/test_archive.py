"""Safe extraction: malicious members are refused and reported, limits stop bombs, good members still arrive."""

import io
import stat
import tarfile
import zipfile

import pytest

from nanomorph.data.archive import ArchiveLimits, archive_kind, extract_archive, list_members, strip_archive_suffix
from nanomorph.errors import NanomorphError

ROOMY = ArchiveLimits(max_members=100, max_member_bytes=10_000, max_total_bytes=100_000)


def _tar_member(archive, name, data=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def malicious_tar(path):
    with tarfile.open(path, "w:gz") as archive:
        _tar_member(archive, "good/a.txt", b"alpha")
        _tar_member(archive, "./good/b.txt", b"beta")
        _tar_member(archive, "../evil.txt", b"escaped")
        _tar_member(archive, "good/../../evil2.txt", b"escaped")
        _tar_member(archive, "/abs.txt", b"absolute")
        _tar_member(archive, "passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _tar_member(archive, "inner", kind=tarfile.SYMTYPE, link="good/a.txt")
        _tar_member(archive, "hard_out", kind=tarfile.LNKTYPE, link="/etc/passwd")
        _tar_member(archive, "hard_in", kind=tarfile.LNKTYPE, link="good/a.txt")
        _tar_member(archive, "fifo", kind=tarfile.FIFOTYPE)
    return path


def malicious_zip(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good/a.txt", b"alpha")
        archive.writestr("../evil.txt", b"escaped")
        archive.writestr("/abs.txt", b"absolute")
        archive.writestr("C:/windows.txt", b"drive")
        link = zipfile.ZipInfo("passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return path


def test_tar_with_malicious_members(tmp_path):
    archive = malicious_tar(tmp_path / "bad.tar.gz")
    dest = tmp_path / "out" / "x"
    report = extract_archive(archive, dest, ROOMY)
    assert sorted(p.relative_to(dest).as_posix() for p in report.extracted) == ["good/a.txt", "good/b.txt", "hard_in"]
    assert (dest / "hard_in").read_bytes() == b"alpha" and not (dest / "hard_in").is_symlink()
    skipped = dict(report.skipped)
    assert skipped["../evil.txt"] == "path traversal ('..' component)"
    assert skipped["good/../../evil2.txt"] == "path traversal ('..' component)"
    assert skipped["/abs.txt"] == "absolute path"
    assert skipped["passwd"] == "symbolic link to '/etc/passwd' (links are never extracted)"
    assert skipped["inner"] == "symbolic link to 'good/a.txt' (links are never extracted)"
    assert skipped["hard_out"].startswith("hard link refused")
    assert skipped["fifo"] == "device, FIFO or other special file"
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["bad.tar.gz", "out/x/good/a.txt", "out/x/good/b.txt", "out/x/hard_in"]


def test_zip_with_malicious_members(tmp_path):
    archive = malicious_zip(tmp_path / "bad.zip")
    dest = tmp_path / "out"
    report = extract_archive(archive, dest, ROOMY)
    assert [p.relative_to(dest).as_posix() for p in report.extracted] == ["good/a.txt"]
    assert dict(report.skipped) == {
        "../evil.txt": "path traversal ('..' component)",
        "/abs.txt": "absolute path",
        "C:/windows.txt": "absolute path (drive letter)",
        "passwd": "symbolic link to '/etc/passwd' (links are never extracted)",
    }
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "bad.zip"]


@pytest.mark.parametrize("limits, message", [
    (ArchiveLimits(max_members=2, max_member_bytes=10_000, max_total_bytes=100_000), "3 members exceed the limit of 2"),
    (ArchiveLimits(max_members=100, max_member_bytes=4_000, max_total_bytes=100_000),
     "member 'big.bin' unpacks to 5,000 bytes, over the limit of 4,000"),
    (ArchiveLimits(max_members=100, max_member_bytes=10_000, max_total_bytes=6_000),
     "members unpack to 7,000 bytes in all, over the limit of 6,000"),
], ids=["count", "member-size", "total-size"])
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_limits_refuse_the_whole_archive(tmp_path, limits, message, kind):
    members = {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000, "big.bin": b"\0" * 5000}
    if kind == "zip":
        path = tmp_path / "bomb.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
    else:
        path = tmp_path / "bomb.tar"
        with tarfile.open(path, "w") as archive:
            for name, data in members.items():
                _tar_member(archive, name, data)
    dest = tmp_path / "out"
    with pytest.raises(NanomorphError, match=message):
        extract_archive(path, dest, limits)
    assert not dest.exists(), "nothing is left behind"
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_a_member_whose_header_lies_about_its_size_is_refused(tmp_path):
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("x.bin", b"x" * 3000)
    data = bytearray(path.read_bytes())
    # Patch the central directory's uncompressed size (offset 24 in its entry) to claim 10 bytes.
    central = data.rindex(b"PK\x01\x02")
    data[central + 24: central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert list_members(path)[0].size == 10
    with pytest.raises(NanomorphError, match="member 'x.bin' is corrupt"):
        extract_archive(path, tmp_path / "out", ArchiveLimits(10, 100, 1000))
    assert not (tmp_path / "out").exists()


def test_select_and_rename_and_atomic_replacement(tmp_path):
    path = tmp_path / "set.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("d/one.png", "d/two.png", "d/notes.txt"):
            archive.writestr(name, name.encode())
    dest = tmp_path / "flat"
    dest.mkdir()
    (dest / "stale.png").write_bytes(b"old")
    report = extract_archive(path, dest, ROOMY, select=lambda m: m.name.endswith(".png"),
                             rename=lambda n: n.replace("/", "__"))
    assert sorted(p.name for p in dest.iterdir()) == ["d__one.png", "d__two.png"]
    assert [p.name for p in report.extracted] == ["d__one.png", "d__two.png"] and report.skipped == []


def test_unreadable_archive_and_names(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(NanomorphError, match="not a readable zip archive"):
        extract_archive(tmp_path / "broken.zip", tmp_path / "out", ROOMY)
    assert archive_kind("a.TAR.GZ") == "tar" and archive_kind("a.zip") == "zip" and archive_kind("a.png") is None
    assert strip_archive_suffix("nanowires.tar.gz") == "nanowires" and strip_archive_suffix("x.tif") == "x.tif"
