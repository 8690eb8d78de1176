"""Safe extraction of zip and tar archives.

Downloaded archives are untrusted input. Every member name is checked before anything is written:

* absolute names (`/etc/passwd`, `C:/x`), names with `..` components and empty names are refused;
* symbolic links are never created; hard links are refused unless tarfile's `data` filter accepts them
  (target inside the extraction folder), and then written as a plain copy of the linked member;
* devices, FIFOs and other special members are refused;
* the member count, each member's size and the total size are limited (a zip or tar bomb stops before its
  data is written, and the byte count is enforced again while writing, in case a header lies).

A refused member is skipped and reported (`ExtractReport.skipped`), the rest is extracted. A limit that is
exceeded stops the whole extraction with a `NanomorphError`. Extraction writes into a hidden staging folder
beside the destination and renames it into place only when every member is written, so a killed run never
leaves a half-extracted folder that looks complete.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from nanomorph.errors import NanomorphError

ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds on what one archive may unpack to."""

    max_members: int
    max_member_bytes: int
    max_total_bytes: int


@dataclass(frozen=True)
class Member:
    """One archive entry as listed in the archive's index (nothing read yet)."""

    name: str
    size: int
    kind: str  # file | dir | symlink | hardlink | special
    link_target: str | None = None


@dataclass
class ExtractReport:
    extracted: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (member name, reason)


def archive_kind(path: str | Path) -> str | None:
    """'zip', 'tar' or None, from the file name (as downloaded archives are named)."""
    name = Path(path).name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    return None


def strip_archive_suffix(name: str) -> str:
    """`data.tar.gz` -> `data`, `x.zip` -> `x`; other names unchanged."""
    lower = name.lower()
    for suffix in sorted(ZIP_SUFFIXES + TAR_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def unsafe_name_reason(name: str) -> str | None:
    """Why a member name may not be written under the destination, or None when it is safe."""
    normalised = name.replace("\\", "/")
    if not normalised.strip("/"):
        return "empty member name"
    if normalised.startswith("/"):
        return "absolute path"
    first = normalised.split("/", 1)[0]
    if len(first) >= 2 and first[1] == ":":
        return "absolute path (drive letter)"
    if ".." in PurePosixPath(normalised).parts:
        return "path traversal ('..' component)"
    if "\x00" in normalised:
        return "NUL byte in member name"
    return None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = (info.external_attr >> 16) & 0xFFFF
    if info.is_dir():
        return "dir"
    if mode and stat.S_ISLNK(mode):
        return "symlink"
    if mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode) != 0:
        return "special"
    return "file"


def _zip_link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    """A zip symlink stores its target as the member's data; read it (only for the message) when short."""
    if _zip_kind(info) != "symlink" or info.file_size > 4096:
        return None
    return archive.read(info).decode("utf-8", errors="replace")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isfile():
        return "file"
    return "special"


def list_members(path: str | Path) -> list[Member]:
    """The archive's entries in stored order; an unreadable archive is a NanomorphError."""
    path = Path(path)
    kind = archive_kind(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                return [Member(i.filename, i.file_size, _zip_kind(i), _zip_link_target(archive, i))
                        for i in archive.infolist()]
        if kind == "tar":
            with tarfile.open(path) as archive:
                return [Member(m.name, m.size, _tar_kind(m), m.linkname or None) for m in archive.getmembers()]
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise NanomorphError(f"{path}: not a readable {kind} archive ({type(exc).__name__}: {exc})") from None
    raise NanomorphError(f"{path}: not an archive this project unpacks ({', '.join(ZIP_SUFFIXES + TAR_SUFFIXES)})")


def _check_limits(path: Path, members: list[Member], wanted: list[Member], limits: ArchiveLimits) -> None:
    if len(members) > limits.max_members:
        raise NanomorphError(
            f"{path}: {len(members):,} members exceed the limit of {limits.max_members:,} "
            "(data.archive.max_members); refusing to unpack it"
        )
    for member in wanted:
        if member.size > limits.max_member_bytes:
            raise NanomorphError(
                f"{path}: member '{member.name}' unpacks to {member.size:,} bytes, over the limit of "
                f"{limits.max_member_bytes:,} (data.archive.max_member_bytes); refusing to unpack the archive"
            )
    total = sum(m.size for m in wanted)
    if total > limits.max_total_bytes:
        raise NanomorphError(
            f"{path}: members unpack to {total:,} bytes in all, over the limit of {limits.max_total_bytes:,} "
            "(data.archive.max_total_bytes); refusing to unpack it"
        )


class _Budget:
    """Counts bytes actually written, so a member whose header understates its size is still stopped."""

    def __init__(self, archive: Path, limits: ArchiveLimits):
        self.archive, self.limits, self.total = archive, limits, 0

    def copy(self, source: IO[bytes], target: Path, name: str) -> None:
        try:
            self._copy(source, target, name)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            raise NanomorphError(f"{self.archive}: member '{name}' is corrupt ({type(exc).__name__}: {exc}); "
                                 "refusing to unpack the archive") from None

    def _copy(self, source: IO[bytes], target: Path, name: str) -> None:
        written = 0
        with open(target, "wb") as out:
            for block in iter(lambda: source.read(_COPY_BLOCK), b""):
                written += len(block)
                self.total += len(block)
                if written > self.limits.max_member_bytes:
                    raise NanomorphError(
                        f"{self.archive}: member '{name}' unpacks to more than {self.limits.max_member_bytes:,} bytes "
                        "(data.archive.max_member_bytes), more than its header said; refusing to unpack the archive"
                    )
                if self.total > self.limits.max_total_bytes:
                    raise NanomorphError(
                        f"{self.archive}: members unpack to more than {self.limits.max_total_bytes:,} bytes in all "
                        "(data.archive.max_total_bytes); refusing to unpack it"
                    )
                out.write(block)


def _skip_reason(member: Member) -> str | None:
    reason = unsafe_name_reason(member.name)
    if reason:
        return reason
    if member.kind == "symlink":
        return f"symbolic link to '{member.link_target}' (links are never extracted)"
    if member.kind == "special":
        return "device, FIFO or other special file"
    return None


@contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `dest` to fill; it replaces `dest` on success and is removed on failure."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)


def _target(root: Path, relative: str) -> Path:
    target = root.joinpath(*PurePosixPath(relative.replace("\\", "/")).parts)
    # Belt and braces: the name checks above make this impossible, but nothing may land outside `root`.
    if not target.resolve().is_relative_to(root.resolve()):
        raise NanomorphError(f"member would be written outside the extraction folder: {relative}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def extract_archive(
    path: str | Path,
    dest: str | Path,
    limits: ArchiveLimits,
    select: Callable[[Member], bool] | None = None,
    rename: Callable[[str], str] | None = None,
) -> ExtractReport:
    """Unpack the regular-file members of `path` chosen by `select` (default: all) into `dest`.

    `rename` maps a member name to its path under `dest` (default: the member's own path); the result must
    itself be a safe relative name. `dest` is replaced as a whole. Returns what was written and what was
    skipped, with reasons. Limits apply to the members selected (the member count to the whole archive).
    """
    path, dest = Path(path), Path(dest)
    members = list_members(path)
    report = ExtractReport()
    wanted: list[Member] = []
    for member in members:
        if member.kind == "dir" or (select is not None and not select(member)):
            continue
        reason = _skip_reason(member)
        if reason is None and rename is not None:
            reason = unsafe_name_reason(rename(member.name))
        if reason:
            report.skipped.append((member.name, reason))
        else:
            wanted.append(member)
    _check_limits(path, members, wanted, limits)
    wanted_names = {m.name for m in wanted}
    budget = _Budget(path, limits)
    kind = archive_kind(path)
    with staged_folder(dest) as root:
        written: list[str] = []
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.filename in wanted_names and not info.is_dir():
                        relative = rename(info.filename) if rename else info.filename
                        with archive.open(info) as source:
                            budget.copy(source, _target(root, relative), info.filename)
                        written.append(relative)
        else:
            if not hasattr(tarfile, "data_filter"):
                raise NanomorphError("safe tar extraction needs Python >= 3.11.4 (tarfile.data_filter)")
            with tarfile.open(path) as archive:
                for member in archive:
                    if member.name not in wanted_names:
                        continue
                    if member.islnk():
                        try:  # the stdlib's own rules for links: the target must stay inside the folder
                            tarfile.data_filter(member, str(root))
                        except tarfile.FilterError as exc:
                            report.skipped.append((member.name, f"hard link refused ({exc})"))
                            continue
                    source = archive.extractfile(member)
                    if source is None:
                        report.skipped.append((member.name, "hard link to a member that is not a regular file"))
                        continue
                    relative = rename(member.name) if rename else member.name
                    with source:
                        budget.copy(source, _target(root, relative), member.name)
                    written.append(relative)
    report.extracted = [dest.joinpath(*PurePosixPath(r.replace("\\", "/")).parts) for r in written]
    return report
