"""The `zenodo` source: a Zenodo record's files, verified, unpacked and arranged into the canonical layout.

The record (default 6377141, the nanowire TEM set of Lu et al.) is read from the records REST API,
`<api_url>/records/<id>`, whose `files` list gives each file's `key`, `size`, `checksum` ("md5:<hex>") and
download link (`links.self`). Each file is downloaded with `download_file` (verified, resumable, retried,
atomic) into `<download_dir>/zenodo-<id>/files/` (a bad file goes to `files/rejected/`). Archives are unpacked safely into `extracted/<name>/`; other files
are copied into `extracted/_files/`. The unpacked tree is then read with `scan_class_tree` and written into the
canonical layout.

Assumed layout of the record, and how it maps (all configurable in params.yaml, `data.zenodo` and
`data.layout`): each class's images sit below a folder named after the class (anywhere in the archive,
e.g. `2022-nanowire-morphology/bundle/`), images are TIFF, and a segmentation label is the PNG with the same
stem, either beside its image or in a `labels/`/`masks/` folder beside an `images/` folder. A record laid
out as `<class>/images/*.tif` + `<class>/labels/*.png` maps one to one.

The zenodo-get package is not used for the transfer: its API URL is fixed to zenodo.org (or the
sandbox), so it cannot be pointed at a local server for offline tests, and it restarts interrupted files
instead of resuming them with an HTTP Range request.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from nanomorph.data.archive import ArchiveLimits, archive_kind, extract_archive, strip_archive_suffix, unsafe_name_reason
from nanomorph.data.fetchers.canonical import (
    FileRecord,
    empty_class_records,
    record,
    unplaced_records,
    write_nanowire_tree,
)
from nanomorph.data.fetchers.http import Checksum, RetryPolicy, download_file, get_json, new_session
from nanomorph.data.layout import TreeRules, scan_class_tree
from nanomorph.errors import NanomorphError

LOOSE_FILES = "_files"


@dataclass(frozen=True)
class RemoteFile:
    key: str
    size: int | None
    checksum: Checksum | None
    url: str


def _safe_key(record_id: str, key: str) -> str:
    reason = unsafe_name_reason(key)
    if reason is None and ("/" in key or "\\" in key or key.startswith(".")):
        reason = "not a plain file name"
    if reason:
        raise NanomorphError(f"Zenodo record {record_id} lists a file named '{key}' ({reason}); refusing it")
    return key


def record_files(api_url: str, record_id: str, policy: RetryPolicy, session: requests.Session | None = None,
                 log: Callable[[str], None] = print) -> list[RemoteFile]:
    """The files of a Zenodo record, from `<api_url>/records/<record_id>`."""
    url = f"{api_url.rstrip('/')}/records/{record_id}"
    answer = get_json(url, policy, session=session, log=log)
    entries = answer.get("files") if isinstance(answer, dict) else None
    if isinstance(entries, dict):  # InvenioRDM's own serialisation: {"entries": {...}} or {"entries": [...]}
        entries = entries.get("entries")
        entries = list(entries.values()) if isinstance(entries, dict) else entries
    if not entries:
        raise NanomorphError(f"{url}: the record lists no files (is it restricted, or the id wrong?)")
    files = []
    for entry in entries:
        key = entry.get("key") or entry.get("filename")
        link = (entry.get("links") or {}).get("self") or (entry.get("links") or {}).get("content")
        if not key or not link:
            raise NanomorphError(f"{url}: a file entry lacks its key or download link: {entry}")
        size = entry.get("size", entry.get("filesize"))
        checksum = entry.get("checksum")
        files.append(RemoteFile(_safe_key(record_id, key), int(size) if size is not None else None,
                                Checksum.parse(checksum) if checksum else None, link))
    return files


def _select(files: Sequence[RemoteFile], patterns: Sequence[str], record_id: str) -> list[RemoteFile]:
    chosen = [f for f in files if any(fnmatch.fnmatchcase(f.key, p) for p in patterns)]
    if not chosen:
        raise NanomorphError(f"Zenodo record {record_id}: no file matches data.zenodo.files {list(patterns)} "
                             f"(the record has {', '.join(f.key for f in files)})")
    return chosen


def _unpack(download: Path, extracted: Path, checksum_text: str, limits: ArchiveLimits,
            records: list[FileRecord]) -> None:
    """Unpack one archive into `extracted/<name>/` unless a finished unpack of these same bytes is there."""
    target = extracted / strip_archive_suffix(download.name)
    marker = extracted / f"{target.name}.unpacked"
    if target.is_dir() and marker.is_file() and marker.read_text() == checksum_text:
        return
    marker.unlink(missing_ok=True)
    report = extract_archive(download, target, limits)
    marker.write_text(checksum_text)
    records += [record(f"{download.name}:{name}", "skipped", reason, role="member") for name, reason in report.skipped]


def fetch_zenodo(
    *,
    api_url: str,
    record_id: str,
    patterns: Sequence[str],
    download_dir: str | Path,
    out_dir: str | Path,
    classes: Sequence[str],
    rules: TreeRules,
    policy: RetryPolicy,
    limits: ArchiveLimits,
    session: requests.Session | None = None,
    log: Callable[[str], None] = print,
) -> list[FileRecord]:
    """Download, verify and unpack the record's files, then write the canonical nanowire layout to `out_dir`."""
    record_id = str(record_id)
    work = Path(download_dir) / f"zenodo-{record_id}"
    extracted = work / "extracted"
    extracted.mkdir(parents=True, exist_ok=True)
    session = session or new_session()
    records: list[FileRecord] = []
    loose = extracted / LOOSE_FILES
    if loose.exists():
        shutil.rmtree(loose)
    for remote in _select(record_files(api_url, record_id, policy, session, log), patterns, record_id):
        got = download_file(remote.url, work / "files" / remote.key, checksum=remote.checksum, size=remote.size,
                            policy=policy, session=session, log=log)
        records.append(record(remote.url, got.action, f"sha256:{got.sha256}", target=got.path, role="download"))
        if archive_kind(got.path):
            _unpack(got.path, extracted, str(remote.checksum or f"sha256:{got.sha256}"), limits, records)
        else:
            loose.mkdir(exist_ok=True)
            shutil.copy2(got.path, loose / remote.key)
    scan_roots = sorted(p for p in extracted.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples, empty = [], set(classes)
    for root in scan_roots:
        scan = scan_class_tree(root, classes, rules)
        samples += scan.samples
        records += unplaced_records(scan.unplaced, role="file")
        empty &= set(scan.empty_classes)
    samples.sort(key=lambda s: (list(classes).index(s.label), str(s.image)))
    records += write_nanowire_tree(samples, out_dir, link="copy")
    records += empty_class_records([c for c in classes if c in empty], extracted)
    return records
