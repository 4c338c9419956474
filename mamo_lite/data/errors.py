"""Errors raised while locating, downloading, verifying or reading datasets.

Every message names the file, URL or parameter involved and says how to fix the problem. Catch
:class:`DataError` to handle all of them; modules further down the data pipeline (the protocol,
the parsers) add their own subclasses here.
"""

from __future__ import annotations

__all__ = ["ChecksumError", "DataError", "DownloadError", "MissingDataError"]


class DataError(Exception):
    """Base class of every data error in mamo_lite."""


class ChecksumError(DataError):
    """A file (or downloaded archive) has the wrong size, sha256 or git blob id."""


class MissingDataError(DataError):
    """Required raw files are absent and cannot (or may not) be downloaded."""


class DownloadError(DataError):
    """A download failed: HTTP error, unreachable host, timeout or a transfer cut short."""
