"""Bringing raw data into data/raw: Zenodo records, CEM500K samples and local folders.

Each fetcher writes the canonical layout (see `nanomorph.data.layout`) atomically and returns one
`FileRecord` per source file: where it went, or why it was left out.
"""

from nanomorph.data.fetchers.canonical import FileRecord, write_records
from nanomorph.data.fetchers.cem500k import fetch_cem500k
from nanomorph.data.fetchers.folder import fetch_folder_generic, fetch_folder_nanowires
from nanomorph.data.fetchers.http import Checksum, ChecksumMismatch, RetryPolicy, download_file
from nanomorph.data.fetchers.zenodo import fetch_zenodo, record_files

__all__ = [
    "Checksum", "ChecksumMismatch", "FileRecord", "RetryPolicy", "download_file", "fetch_cem500k",
    "fetch_folder_generic", "fetch_folder_nanowires", "fetch_zenodo", "record_files", "write_records",
]
