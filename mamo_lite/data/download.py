"""Download, extract, read and hash raw data files: the one download helper (STYLE lesson 5).

* :func:`download` fetches one URL with ``urllib.request``: streamed, with a ``tqdm`` progress bar,
  size and sha256 verified, written to a temporary file beside the target and ``os.replace``-d into
  place, so an interrupted, failed or corrupt transfer never leaves a file behind. It never prompts.
* :func:`extract_zip` extracts archive members atomically (temporary file + rename each) and refuses
  member names that would escape the target folder.
* :func:`open_binary` / :func:`sha256_file` / :func:`git_blob_id` read a file transparently when it
  is gzip-compressed (``*.gz``: the *decompressed* bytes count) or a member of a zip archive.

**Zip members as paths.** A member of an archive that is read in place (e.g. Book-Crossing's
user-supplied ``BX-CSV-Dump.zip``) is addressed by the archive's path followed by the member name,
as if the archive were a folder: ``.../book-crossing/BX-CSV-Dump.zip/BX-Books.csv``. Such a path
does not exist on disk; :func:`open_binary` (and ``registry.open_text``) and the hashing functions
resolve it with :func:`split_zip_member`. Read raw files through these functions, never with
``open`` or a bare ``pandas.read_csv(path)``.

**Digest memo.** Hashing 100+ MB on every call would be slow, so digests are memoised in
``cache_dir() / "digests.json"``, keyed by the absolute path and valid only while the file's inode,
``ctime_ns``, size and ``mtime_ns`` are unchanged. ``ctime`` cannot be set by ``touch -r`` or
``os.utime``, so an edit that keeps the size and resets the modification time is hashed again. A
file changed less than ``RACY_NS`` before it was hashed is not memoised (file timestamps are
coarse, so a later edit within the same tick would leave them all unchanged). The memo is rewritten
atomically; if the cache folder is not writable, digests are simply recomputed next time.

**Corrupt files.** A ``.gz`` file or zip member whose content cannot be read to the end (bad CRC,
truncated, not gzip at all) raises :class:`~mamo_lite.data.errors.ChecksumError` naming the file.

**Temporary files.** Every writer here writes ``.<name>.<8 random characters>.part`` (downloads,
extraction) or ``.tmp`` (the memo, the processed-data cache) beside its target and renames it into
place. A writer killed outright (SIGKILL, power loss) leaves its temporary file behind: the next
write into that folder removes such files once they are ``mamo_lite.utils.STALE_TEMP_AGE_S`` old
(``mamo_lite.utils.remove_stale_temp_files``). A live writer's file is younger: downloads time out long before.
A failed download removes the folders it created, so a mistyped data folder is not left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import lzma
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from mamo_lite import __version__
from mamo_lite.data.errors import ChecksumError, DataError, DownloadError
from mamo_lite.utils import atomic_write_text, remove_stale_temp_files

__all__ = [
    "Digests",
    "cache_dir",
    "content_size",
    "download",
    "extract_zip",
    "file_digests",
    "git_blob_id",
    "open_binary",
    "sha256_file",
    "split_zip_member",
]

CHUNK = 1 << 20
"""Bytes read at a time when hashing, copying or downloading."""

MEMO_NAME = "digests.json"
_MEMO_LOCK = threading.Lock()

RACY_NS = 2_000_000_000
"""A file whose ctime or mtime is less than this (ns) before hashing began is not memoised."""

_CORRUPT = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, zipfile.BadZipFile)
"""What reading a damaged ``.gz`` file or zip member raises."""


def _corrupt_message(path: Path, err: BaseException) -> str:
    return (f"{path} is corrupt: its content cannot be read ({type(err).__name__}: {err}). Delete it and "
            "download or supply a good copy.")


# ------------------------------------------------------------------------------- temporary files


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and its parents; returns the folders created, deepest first."""
    created = []
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


# --------------------------------------------------------------------------------------- location


def _env_path(variable: str) -> Path | None:
    """The path in environment variable ``variable`` (``~`` expanded, relative to the cwd), if set."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return None
    return Path(value).expanduser().absolute()


def cache_dir() -> Path:
    """The user cache folder of mamo_lite (not created here).

    ``$MAMO_LITE_CACHE`` if set, else ``$XDG_CACHE_HOME/mamo_lite``, else ``~/.cache/mamo_lite``.
    It holds the digest memo (``digests.json``), the processed-data cache (``processed/``) and,
    unless ``data_dir`` or ``$MAMO_LITE_DATA`` says otherwise, the raw datasets themselves.
    """
    explicit = _env_path("MAMO_LITE_CACHE")
    if explicit is not None:
        return explicit
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None else Path.home() / ".cache") / "mamo_lite"


# ------------------------------------------------------------------------------ reading raw files


def split_zip_member(path: str | Path) -> tuple[Path, str] | None:
    """``(archive, member)`` if ``path`` addresses a member inside a ``*.zip`` file, else ``None``.

    A path that exists on disk is never a member. Otherwise the nearest ancestor named ``*.zip``
    that is a regular file is the archive, and the rest of the path (``/``-joined) the member.
    """
    path = Path(path)
    if path.exists():
        return None
    for parent in path.parents:
        if parent.suffix.lower() == ".zip" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def open_binary(path: str | Path) -> BinaryIO:
    """Open a raw file for reading bytes: plain, gzip-compressed (``*.gz``) or a zip member.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        DataError: ``path`` names a zip member that does not exist, or the archive is unreadable.
    """
    path = Path(path)
    member = split_zip_member(path)
    if member is not None:
        archive, name = member
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile as err:
            raise DataError(
                f"{archive} is not a readable zip archive ({err}); delete it and supply a good copy."
            ) from err
        try:
            # The member keeps the archive file open after zf.close() (zipfile reference-counts it).
            return zf.open(name)  # type: ignore[return-value]
        except KeyError as err:
            raise DataError(
                f"{archive} has no member {name!r} (members: {', '.join(zf.namelist()[:20])}); "
                "supply an archive with that member or the extracted file."
            ) from err
        finally:
            zf.close()
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def content_size(path: str | Path) -> int:
    """Size in bytes of the *content* of ``path`` (decompressed for ``.gz``, uncompressed for members).

    Cheap: ``stat`` for plain files, the zip directory for members, the gzip trailer (size modulo
    2**32, exact below 4 GiB) for ``.gz``.
    """
    path = Path(path)
    member = split_zip_member(path)
    if member is not None:
        with zipfile.ZipFile(member[0]) as zf:
            return zf.getinfo(member[1]).file_size
    if path.suffix.lower() == ".gz":
        with open(path, "rb") as f:
            magic = f.read(2)
            end = f.seek(0, os.SEEK_END)
            if magic != b"\x1f\x8b" or end < 18:  # 10-byte header + 8-byte trailer at least
                raise ChecksumError(_corrupt_message(path, gzip.BadGzipFile(
                    f"not a gzip file ({end} bytes, starts with {magic!r})")))
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    return path.stat().st_size


# ------------------------------------------------------------------------------------- hashing


@dataclass(frozen=True)
class Digests:
    """Digests of a file's content: ``sha256``, ``nbytes`` and (when asked for) its git blob id."""

    sha256: str
    nbytes: int
    git_blob: str | None = None


def _memo_key_and_stamp(path: Path) -> tuple[str, dict[str, int]]:
    """Memo key (absolute path, member appended) and the stamp of the file on disk: inode,
    ``ctime_ns``, size, ``mtime_ns``."""
    member = split_zip_member(path)
    on_disk = member[0] if member is not None else path
    st = on_disk.stat()
    key = str(on_disk.resolve())
    if member is not None:
        key += "/" + member[1]
    return key, {"ino": st.st_ino, "ctime_ns": st.st_ctime_ns, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _memo_load() -> dict[str, dict]:
    try:
        data = json.loads((cache_dir() / MEMO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _memo_store(key: str, entry: dict) -> None:
    """Merge one entry into the memo file, atomically; silently give up if the cache is unwritable."""
    folder = cache_dir()
    with _MEMO_LOCK:
        entries = _memo_load()
        entries[key] = entry
        try:
            atomic_write_text(folder / MEMO_NAME,
                              json.dumps({"version": 1, "entries": entries}, indent=0, sort_keys=True))
        except OSError:
            pass


def _hash(path: Path, blob_size: int | None) -> Digests:
    """Stream ``path``'s content once: sha256, byte count and, if ``blob_size`` is given, the git blob id."""
    sha = hashlib.sha256()
    blob = None
    if blob_size is not None:
        blob = hashlib.sha1(usedforsecurity=False)
        blob.update(b"blob %d\0" % blob_size)
    n = 0
    try:
        with open_binary(path) as f:
            while chunk := f.read(CHUNK):
                sha.update(chunk)
                if blob is not None:
                    blob.update(chunk)
                n += len(chunk)
    except _CORRUPT as err:
        raise ChecksumError(_corrupt_message(path, err)) from err
    if blob is not None and n != blob_size:
        raise DataError(f"{path} changed while it was being hashed ({blob_size} then {n} bytes); retry.")
    return Digests(sha.hexdigest(), n, blob.hexdigest() if blob is not None else None)


def file_digests(path: str | Path, *, git_blob: bool = False, memo: bool = True) -> Digests:
    """Digests of ``path``'s content (decompressed for ``.gz``; zip members supported), memoised.

    Args:
        path: the file (or zip-member path, see the module docstring).
        git_blob: also compute the git blob id, ``sha1(b"blob <size>\\0" + content)``, i.e. what
            ``git hash-object`` prints.
        memo: read and update the digest memo in :func:`cache_dir` (keyed by absolute path, inode,
            ``ctime_ns``, size and ``mtime_ns``).

    Raises:
        ChecksumError: the content of a ``.gz`` file or zip member cannot be read (corrupt).
    """
    path = Path(path)
    key, stamp = _memo_key_and_stamp(path)
    started = time.time_ns()
    entry = _memo_load().get(key) if memo else None
    valid = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
             and isinstance(entry.get("bytes"), int))
    if valid and all(entry.get(k) == v for k, v in stamp.items()):
        if not git_blob or entry.get("git_blob"):
            return Digests(entry["sha256"], entry["bytes"], entry.get("git_blob"))
    else:
        entry = None
    if not git_blob:
        digests = _hash(path, None)
    else:
        size = entry["bytes"] if entry is not None else None
        if size is None and path.suffix.lower() != ".gz":
            size = content_size(path)  # exact for plain files and zip members
        if size is None:  # .gz without a memo entry: count the bytes first
            size = _hash(path, None).nbytes
        digests = _hash(path, size)
    settled = max(stamp["ctime_ns"], stamp["mtime_ns"]) < started - RACY_NS
    if memo and settled and _memo_key_and_stamp(path)[1] == stamp:  # and unchanged while hashed
        _memo_store(key, {**stamp, "sha256": digests.sha256, "bytes": digests.nbytes,
                          "git_blob": digests.git_blob or (entry or {}).get("git_blob")})
    return digests


def sha256_file(path: str | Path) -> str:
    """sha256 (hex) of ``path``'s content, streamed; of the *decompressed* bytes for ``.gz``. Memoised."""
    return file_digests(path).sha256


def git_blob_id(path: str | Path) -> str:
    """The git blob id of ``path``'s content, as ``git hash-object`` computes it. Memoised."""
    blob = file_digests(path, git_blob=True).git_blob
    assert blob is not None
    return blob


# ------------------------------------------------------------------------------------ download


def _manual_hint(url: str, dest: Path, sha256: str, nbytes: int | None) -> str:
    size = f", {nbytes:,} bytes" if nbytes is not None else ""
    return (
        f"To install it by hand (e.g. when offline), download {url} on a connected machine and save it "
        f"as {dest} (folder {dest.parent}; expected sha256 {sha256}{size})."
    )


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str,
    nbytes: int | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> Path:
    """Download ``url`` to ``dest``, verifying size and checksums; atomic and never interactive.

    The body is streamed into a temporary file in ``dest``'s folder and renamed onto ``dest`` only
    once its size (``nbytes``, and the server's Content-Length), sha256 and, if given, md5 match.
    On any failure the temporary file is removed, ``dest`` is untouched and the folders created for
    it are removed again. Stale temporary files of killed downloads are removed first.

    Args:
        url: what to fetch (``http(s)://``; ``file://`` works too).
        dest: final path; its folder is created if needed.
        sha256: expected sha256 (hex) of the bytes.
        nbytes: expected size in bytes, if known.
        md5: expected md5 (hex), if the publisher gives one.
        timeout: seconds to wait for the connection and for each read.
        progress: show a ``tqdm`` bar; ``None`` shows it only when stderr is a terminal.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DownloadError: HTTP error, unreachable host, timeout, connection closed early, disk error.
        ChecksumError: wrong size, sha256 or md5.
    """
    dest = Path(dest)
    folder = dest.parent
    hint = _manual_hint(url, dest, sha256, nbytes)
    created: list[Path] = []
    try:
        created = _make_folder(folder)
        remove_stale_temp_files(folder)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:
        _remove_empty(created)
        raise DownloadError(
            f"Cannot write into {folder} to download {url}: {err}. Choose a writable data folder "
            f"(data_dir= or $MAMO_LITE_DATA). {hint}"
        ) from err
    tmp = Path(tmp_name)
    try:
        sha, md = hashlib.sha256(), (hashlib.md5(usedforsecurity=False) if md5 else None)
        received, announced = 0, None
        try:
            with os.fdopen(fd, "wb") as out:
                request = urllib.request.Request(url, headers={"User-Agent": f"mamo-lite/{__version__}"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    announced = int(length) if length and length.isdigit() else None
                    if announced is not None and nbytes is not None and announced != nbytes:
                        raise ChecksumError(
                            f"{url} announces {announced:,} bytes but {nbytes:,} are expected: the server "
                            f"serves a different file; nothing was saved. {hint}"
                        )
                    with tqdm(total=announced or nbytes, unit="B", unit_scale=True, unit_divisor=1024,
                              desc=dest.name, disable=not _show_progress(progress), leave=False) as bar:
                        while chunk := response.read(CHUNK):
                            out.write(chunk)
                            sha.update(chunk)
                            if md is not None:
                                md.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            err.close()
            raise DownloadError(f"Could not download {url}: HTTP {err.code} {err.reason}. {hint}") from err
        except urllib.error.URLError as err:
            raise DownloadError(
                f"Could not reach {url}: {err.reason} (offline, or the host is down). {hint}"
            ) from err
        except TimeoutError as err:
            raise DownloadError(f"Download of {url} timed out after {timeout} s. Retry, or: {hint}") from err
        except (http.client.HTTPException, ConnectionError) as err:
            raise DownloadError(
                f"Connection closed early while downloading {url} after {received:,} bytes "
                f"({type(err).__name__}). Retry, or: {hint}"
            ) from err
        except OSError as err:
            raise DownloadError(f"Could not save {url} into {folder}: {err}. {hint}") from err
        if announced is not None and received < announced:
            raise DownloadError(
                f"Connection closed early while downloading {url}: got {received:,} of {announced:,} "
                f"bytes; nothing was saved. Retry, or: {hint}"
            )
        got = sha.hexdigest()
        if (nbytes is not None and received != nbytes) or got != sha256:
            expected = f"{nbytes:,} bytes, " if nbytes is not None else ""
            raise ChecksumError(
                f"Checksum mismatch for {url}: expected {expected}sha256 {sha256}; got {received:,} bytes, "
                f"sha256 {got}. The download was discarded (the transfer was corrupted or the server "
                f"changed the file). Retry, or: {hint}"
            )
        if md is not None and md.hexdigest() != md5:
            raise ChecksumError(
                f"md5 mismatch for {url}: expected {md5}, got {md.hexdigest()}; the download was "
                f"discarded. {hint}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise
    return dest


# --------------------------------------------------------------------------------- extraction


def _safe_target(dest_dir: Path, member: str, strip_prefix: str) -> Path:
    """Where ``member`` goes below ``dest_dir``; ``DataError`` if the name could escape it."""
    name = member[len(strip_prefix):] if strip_prefix and member.startswith(strip_prefix) else member
    parts = PurePosixPath(name.replace("\\", "/")).parts
    unsafe = (
        not parts
        or name.startswith(("/", "\\"))
        or ".." in parts
        or ":" in parts[0]
    )
    target = dest_dir.joinpath(*parts) if parts else dest_dir
    root = dest_dir.resolve()
    if unsafe or not target.resolve().is_relative_to(root) or target.resolve() == root:
        raise DataError(
            f"Refusing to extract member {member!r}: its path would land outside {dest_dir}. The "
            "archive is malformed or malicious; delete it and download a good copy."
        )
    return target


def extract_zip(
    archive: str | Path,
    dest_dir: str | Path,
    members: Iterable[str] | None = None,
    *,
    strip_prefix: str = "",
) -> dict[str, Path]:
    """Extract ``members`` (default: all files) of zip ``archive`` into ``dest_dir``, atomically.

    Each member is written to a temporary file beside its target and renamed into place, so an
    error (bad CRC, full disk) never leaves a half-written file. Member names that are absolute,
    contain ``..`` or a drive are refused (``DataError``) before anything is written.

    Args:
        archive: the zip file.
        dest_dir: folder to extract into (created if needed).
        members: names inside the archive; ``None`` extracts every file.
        strip_prefix: removed from the start of member names, e.g. ``"ml-1m/"`` so that
            ``ml-1m/ratings.dat`` lands in ``dest_dir/ratings.dat``.

    Returns:
        ``{member: extracted path}``.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise ChecksumError(
            f"{archive} is not a readable zip archive ({err}); delete it and download or supply it again."
        ) from err
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()] if members is None else list(members)
        available = set(zf.namelist())
        absent = [n for n in names if n not in available]
        if absent:
            raise DataError(
                f"{archive} lacks member(s) {', '.join(absent)}; it is not the expected archive. Delete it "
                "and download or supply the right one."
            )
        targets = {name: _safe_target(dest_dir, name, strip_prefix) for name in names}
        for name, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(target.parent)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(name) as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                os.replace(tmp_name, target)
            except _CORRUPT as err:
                Path(tmp_name).unlink(missing_ok=True)
                raise ChecksumError(
                    f"Member {name!r} of {archive} is corrupt ({err}); delete the archive and download "
                    "or supply it again."
                ) from err
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    return targets

