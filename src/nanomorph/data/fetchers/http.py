"""Verified, resumable, retrying HTTP downloads.

`download_file` is the one way this project brings a remote file to disk:

* idempotent: a destination that already exists and matches its checksum is not fetched again;
* resumable: bytes go to `<name>.part`; after a dropped connection the next attempt asks only for the rest
  (HTTP `Range: bytes=<have>-`), and starts over if the server ignores or refuses the range;
* retried: connection errors, time-outs, truncated bodies and HTTP 408/425/429/5xx are retried with
  exponential back-off (`backoff_s * 2**k`, at least the server's `Retry-After`); other HTTP errors are final;
* verified and atomic: the `.part` file is checked against the expected checksum and size, then renamed onto
  the destination. A file that fails its checksum is moved to `rejected/` beside it (kept for inspection,
  never used) and the download fails with a `ChecksumMismatch` naming the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3

from nanomorph.data.io import file_digest
from nanomorph.errors import NanomorphError

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 120.0
USER_AGENT = "nanomorph-fetch/0.1 (python-requests)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ChecksumMismatch(NanomorphError):
    """A downloaded file does not match its published checksum."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5           # attempts after the first
    backoff_s: float = 1.0     # first pause; doubled after each failed attempt
    timeout_s: float = 60.0    # connect and read time-out per request
    chunk_bytes: int = 1 << 20


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """'md5:<hex>' (Zenodo's form), 'sha256:<hex>', or a bare hex digest (md5/sha1/sha256 by length)."""
        text = text.strip()
        if ":" in text:
            algorithm, digest = text.split(":", 1)
        else:
            algorithm = {32: "md5", 40: "sha1", 64: "sha256"}.get(len(text), "")
            digest = text
        algorithm = algorithm.lower()
        if algorithm not in hashlib.algorithms_available or not re.fullmatch(r"[0-9a-fA-F]+", digest):
            raise NanomorphError(f"'{text}' is not a checksum this project understands (e.g. md5:<32 hex digits>)")
        return cls(algorithm, digest.lower())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass(frozen=True)
class Downloaded:
    path: Path
    action: str      # 'present' (already verified on disk) | 'downloaded'
    sha256: str


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return min(float(value), MAX_RETRY_AFTER_S)
    except ValueError:
        return None  # an HTTP-date form: fall back to our own back-off


def _with_retries(what: str, attempt_once: Callable[[], Any], policy: RetryPolicy,
                  sleep: Callable[[float], None], log: Callable[[str], None]) -> Any:
    for attempt in range(policy.retries + 1):
        try:
            return attempt_once()
        except _Retryable as exc:
            if attempt == policy.retries:
                raise NanomorphError(f"{what}: failed after {policy.retries + 1} attempts; last error: {exc}") from None
            delay = policy.backoff_s * 2**attempt
            if exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            log(f"{what}: {exc}; retrying in {delay:.1f} s (attempt {attempt + 2} of {policy.retries + 1})")
            sleep(delay)
    raise AssertionError("unreachable")


def _raise_for_status(url: str, response: requests.Response) -> None:
    if response.status_code in RETRY_STATUSES:
        raise _Retryable(f"HTTP {response.status_code} {response.reason}", _retry_after(response))
    if response.status_code >= 400:
        raise NanomorphError(f"{url}: HTTP {response.status_code} {response.reason}")


def get_json(url: str, policy: RetryPolicy, session: requests.Session | None = None,
             sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print) -> Any:
    """GET a JSON document with the same retry rules as file downloads."""
    session = session or new_session()

    def once() -> Any:
        try:
            response = session.get(url, timeout=policy.timeout_s, headers={"Accept": "application/json"})
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retryable(f"connection problem ({type(exc).__name__})") from None
        _raise_for_status(url, response)
        try:
            return response.json()
        except ValueError:
            raise NanomorphError(f"{url}: the answer is not JSON") from None

    return _with_retries(url, once, policy, sleep, log)


def _set_aside(path: Path) -> Path:
    """Move a bad file into `rejected/` beside it (numbered if that name is taken); returns the new path."""
    rejected = path.parent / "rejected"
    rejected.mkdir(exist_ok=True)
    name = path.name.removesuffix(".part")
    target = rejected / name
    n = 1
    while target.exists():
        target = rejected / f"{name}.{n}"
        n += 1
    os.replace(path, target)
    return target


def _verified(path: Path, checksum: Checksum | None, size: int | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return checksum is None or file_digest(path, checksum.algorithm) == checksum.hexdigest


def _transfer(session: requests.Session, url: str, part: Path, size: int | None, policy: RetryPolicy) -> None:
    """One GET of the missing bytes into `part`; raises _Retryable when the body is incomplete."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # a stale partial of some other file: start over
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return
    # Byte ranges count stored bytes, so ask for the file as stored (no gzip transfer encoding).
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        with session.get(url, headers=headers, stream=True, timeout=policy.timeout_s) as response:
            if response.status_code == 416:
                part.unlink(missing_ok=True)
                raise _Retryable("the server refused to resume the partial download; starting over")
            _raise_for_status(url, response)
            mode = "wb"
            if offset and response.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
                if not match or int(match.group(1)) != offset:
                    part.unlink(missing_ok=True)
                    raise _Retryable("the server answered the resume request with another range; starting over")
                mode = "ab"
            with open(part, mode) as out:
                # read1 hands over whatever has arrived, so the bytes before a dropped connection reach the disk
                # (a plain read of a fixed block size discards a block that the drop cut short).
                while block := response.raw.read1(policy.chunk_bytes):
                    out.write(block)
    except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as exc:
        kept = part.stat().st_size if part.exists() else 0
        raise _Retryable(f"connection lost ({type(exc).__name__}) with {kept:,} bytes on disk") from None
    if size is not None and part.stat().st_size < size:
        raise _Retryable(f"body ended at {part.stat().st_size:,} of {size:,} bytes")


def download_file(
    url: str,
    dest: str | Path,
    *,
    checksum: Checksum | None,
    size: int | None,
    policy: RetryPolicy,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> Downloaded:
    """Bring `url` to `dest`, verified against `checksum` and `size` (either may be None: then unchecked)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if _verified(dest, checksum, size):
            return Downloaded(dest, "present", file_digest(dest, "sha256"))
        moved = _set_aside(dest)
        log(f"{dest}: the file on disk does not match its checksum; moved to {moved}, downloading again")
    part = dest.with_name(dest.name + ".part")
    session = session or new_session()
    _with_retries(f"{url}", lambda: _transfer(session, url, part, size, policy), policy, sleep, log)
    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        moved = _set_aside(part)
        raise ChecksumMismatch(f"{dest.name}: size mismatch (expected {size:,} bytes, got {got:,}); "
                               f"the download was moved to {moved} and is not used")
    if checksum is not None:
        got = file_digest(part, checksum.algorithm)
        if got != checksum.hexdigest:
            moved = _set_aside(part)
            raise ChecksumMismatch(
                f"{dest.name}: checksum mismatch (expected {checksum}, got {checksum.algorithm}:{got}); the download "
                f"was moved to {moved} and is not used. Run fetch again to download it afresh; if it fails again, "
                "the server's file differs from its published checksum"
            )
    os.replace(part, dest)
    return Downloaded(dest, "downloaded", file_digest(dest, "sha256"))
