"""The `cem500k` source: a seeded random sample of CEM500K images for pretraining, in the flat generic layout.

CEM500K (Conrad & Narayan, eLife 2021; EMPIAR-10592) is about 500,000 224 px PNG patches. `url` is either

* an archive (zip or tar, e.g. the EMPIAR-10592 download): it is downloaded once (verified when a checksum
  is configured, resumable), its image members are listed and sorted by name, `count` of them are drawn
  without replacement by a generator seeded with `seed`, and only those are unpacked (safely); or
* a listing (any other file): one image URL per line, optionally followed by its checksum
  (`<url> md5:<hex>` or `<url>,<hex>`); relative URLs are resolved against the listing's URL; `#` starts
  a comment. `count` entries are drawn the same way and each is downloaded and verified.

The paper pretrained on 832 such images; the profiles' `data.generic_images` set `count`. The same url,
count and seed always give the same files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlparse

import numpy as np
import requests

from nanomorph.data.archive import ArchiveLimits, Member, archive_kind, extract_archive, list_members, unsafe_name_reason
from nanomorph.data.fetchers.canonical import FileRecord, record, write_flat
from nanomorph.data.fetchers.http import Checksum, RetryPolicy, download_file, new_session
from nanomorph.data.layout import IMAGE_SUFFIXES
from nanomorph.errors import NanomorphError

_SEPARATORS = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class ListedImage:
    url: str
    checksum: Checksum | None


def sample_indices(available: int, count: int, seed: int) -> np.ndarray:
    """`min(count, available)` distinct indices in increasing order, drawn by a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=min(count, available), replace=False))


def url_file_name(url: str) -> str:
    name = unquote(PurePosixPath(urlparse(url).path).name)
    if not name or unsafe_name_reason(name) or name.startswith("."):
        raise NanomorphError(f"{url}: cannot name a local file after this URL")
    return name


def parse_listing(path: Path, base_url: str) -> list[ListedImage]:
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise NanomorphError(f"{path}: the listing is not UTF-8 text (is data.cem500k.url an archive "
                             "with an unusual name?)") from None
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = [t for t in _SEPARATORS.split(line) if t]
        if len(tokens) > 2:
            raise NanomorphError(f"{path} line {number}: expected '<url> [checksum]', got '{line}'")
        checksum = Checksum.parse(tokens[1]) if len(tokens) == 2 else None
        entries.append(ListedImage(urljoin(base_url, tokens[0]), checksum))
    if not entries:
        raise NanomorphError(f"{path}: the listing names no images")
    return entries


def _is_image_member(member: Member) -> bool:
    name = PurePosixPath(member.name)
    return (member.kind == "file" and name.suffix.lower() in IMAGE_SUFFIXES and not name.name.startswith(".")
            and unsafe_name_reason(member.name) is None)


def _flat_name(member_name: str) -> str:
    return "__".join(PurePosixPath(member_name.replace("\\", "/")).parts)


def fetch_cem500k(
    *,
    url: str | None,
    checksum: str | None,
    count: int,
    seed: int,
    download_dir: str | Path,
    out_dir: str | Path,
    policy: RetryPolicy,
    limits: ArchiveLimits,
    session: requests.Session | None = None,
    log: Callable[[str], None] = print,
) -> list[FileRecord]:
    """Sample `count` CEM500K images from `url` (archive or listing) into the flat folder `out_dir`."""
    if not url:
        raise NanomorphError("data.cem500k.url is not set: give the URL of the CEM500K archive (EMPIAR-10592, "
                             "https://www.ebi.ac.uk/empiar/EMPIAR-10592/) or of a file listing image URLs")
    if count < 1:
        raise NanomorphError(f"data.generic_images must be at least 1 to sample CEM500K, got {count}")
    work = Path(download_dir) / "cem500k"
    session = session or new_session()
    expected = Checksum.parse(checksum) if checksum else None
    if expected is None:
        log(f"{url}: no checksum configured (data.cem500k.checksum), so the download is not verified; "
            "its sha256 is recorded in the fetch report")
    got = download_file(url, work / url_file_name(url), checksum=expected, size=None, policy=policy,
                        session=session, log=log)
    records = [record(url, got.action, f"sha256:{got.sha256}", target=got.path, role="download")]
    if archive_kind(got.path):
        members = sorted((m for m in list_members(got.path) if _is_image_member(m)), key=lambda m: m.name)
        if not members:
            raise NanomorphError(f"{got.path}: the archive holds no images ({', '.join(IMAGE_SUFFIXES)})")
        chosen = {members[i].name for i in sample_indices(len(members), count, seed)}
        _note_short(log, url, count, len(members))
        report = extract_archive(got.path, Path(out_dir), limits, select=lambda m: m.name in chosen, rename=_flat_name)
        records += [record(f"{got.path.name}:{name}", "skipped", reason, role="member") for name, reason in report.skipped]
        records += [record(f"{got.path.name}:{name}", "placed", target=Path(out_dir) / _flat_name(name), role="generic")
                    for name in sorted(chosen - {n for n, _ in report.skipped})]
        return records
    listing = parse_listing(got.path, url)
    _note_short(log, url, count, len(listing))
    picked: list[tuple[Path, str]] = []
    for index in sample_indices(len(listing), count, seed):
        entry = listing[index]
        name = url_file_name(entry.url)
        image = download_file(entry.url, work / "files" / f"{index:06d}_{name}", checksum=entry.checksum, size=None,
                              policy=policy, session=session, log=log)
        records.append(record(entry.url, image.action, f"sha256:{image.sha256}", target=image.path, role="download"))
        picked.append((image.path, Path(name).stem))
    records += write_flat(picked, out_dir, link="copy")
    return records


def _note_short(log: Callable[[str], None], url: str, count: int, available: int) -> None:
    if available < count:
        log(f"{url}: asked for {count} images but only {available} are available; taking all {available}")

