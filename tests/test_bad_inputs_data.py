"""Bad inputs and faults in the data layer (issue 10's audit): each test names the input and what the
package does about it through its ``bad_input`` mark, which the book's list of bad inputs is made from.

No network: downloads use ``file://`` URLs or a closed local port.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_parsers import BX_FILES, ML1M_FILES, copy_fixtures, edit, paths
from test_registry import _isolated_env, _sha  # noqa: F401 (_isolated_env: an autouse fixture)

from mamo_lite.data import download as dl
from mamo_lite.data import load
from mamo_lite.data.errors import ChecksumError, DownloadError, MissingDataError
from mamo_lite.data.parsers import ParseError, parse_book_crossing, parse_movielens_1m
from mamo_lite.data.registry import REGISTRY, DatasetSpec, FileSpec, Identity, Source, ensure_files

bad_input = pytest.mark.bad_input
SYNTHETIC = {"n_users": 40, "n_items": 60}  # a small synthetic dataset: loads in well under a second




def _toy_spec(content: bytes, url: str | None = "https://example.invalid/ratings.dat") -> DatasetSpec:
    """One file, ``toy/ratings.dat``, accepted only with ``content``."""
    source = Source("file", "toy/ratings.dat", url=url, sha256=_sha(content), nbytes=len(content))
    ident = (Identity("complete", len(content), sha256=_sha(content)),)
    return DatasetSpec("toy", "Toy", (FileSpec("ratings", "toy/ratings.dat", ident, "ascii", source),),
                       citation="-", terms="-", homepage="-")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_files(cache: Path) -> list[Path]:
    folder = cache / "processed"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_bad_input_marks_are_plain_sentences() -> None:
    """Every mark has a case and a handling: the book lists them verbatim."""
    import sys

    module = sys.modules[__name__]
    for name in dir(module):
        fn = getattr(module, name)
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "bad_input":
                for key in ("case", "handling"):
                    text = mark.kwargs[key]
                    assert not text[0].islower() and text.endswith(".") and "\n" not in text, (name, key)


# ------------------------------------------------------------------- 1. a crafted processed cache


class _Payload:
    """Unpickling this creates ``marker``: stands for any code a crafted pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _write_torch_pickle(path: Path, marker: Path) -> None:
    torch.save({"format_version": 2, "ratings": _Payload(marker)}, path)


def _write_npz_with_pickle(path: Path, marker: Path) -> None:
    names = [n.removesuffix(".npy") for n in zipfile.ZipFile(path).namelist()]
    with open(path, "wb") as f:
        np.savez(f, **{n: np.array([_Payload(marker)], dtype=object) for n in names})


@bad_input(case="A processed-data cache file was replaced by a crafted pickle that runs code when loaded.",
           handling="The cache holds only arrays and JSON and is read without unpickling; the file is "
                    "reported as unreadable and rebuilt, and no code runs.")
@pytest.mark.parametrize("craft", [_write_torch_pickle, _write_npz_with_pickle], ids=["torch", "npz"])
def test_crafted_cache_file_runs_no_code(tmp_path: Path, craft) -> None:
    cache, marker = tmp_path / "cache-root", tmp_path / "marker"
    good = load("synthetic", cache=cache, **SYNTHETIC)
    [path] = _cache_files(cache)
    craft(path, marker)
    with pytest.warns(RuntimeWarning, match="unreadable or stale.*rebuilding"):
        again = load("synthetic", cache=cache, **SYNTHETIC)
    assert not marker.exists()
    assert again.ratings.equals(good.ratings) and again.items.equals(good.items)
    assert again.users.equals(good.users) and again.provenance == good.provenance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = load("synthetic", cache=cache, **SYNTHETIC)  # the rebuilt cache file is good
    assert third.ratings.equals(good.ratings)


def test_cache_round_trip_is_exact(tmp_path: Path) -> None:
    """Every column kind (str with missing values, nullable Int64, tuples, bools) survives the cache."""
    first = load("synthetic", cache=tmp_path, **SYNTHETIC)
    second = load("synthetic", cache=tmp_path, **SYNTHETIC)
    for name in ("ratings", "users", "items"):
        a, b = getattr(first, name), getattr(second, name)
        assert a.equals(b) and list(a.dtypes) == list(b.dtypes), name
    assert second.vocabs == first.vocabs and second.spec == first.spec and second.protocol == first.protocol
    assert {k: v.tolist() for k, v in second.splits.items()} == {k: v.tolist() for k, v in first.splits.items()}
    a, b = first.tasks("all"), second.tasks("all")
    assert torch.equal(a.support_x["genre"], b.support_x["genre"]) and torch.equal(a.query_y, b.query_y)


# --------------------------------------------------------- 2. same-size edit with the mtime reset


@bad_input(case="A raw file was edited without changing its size and its modification time was reset "
                "(touch -r, os.utime).",
           handling="The checksum memo is keyed on inode, ctime, size and mtime (ctime cannot be reset), "
                    "so the file is hashed again and the edit is reported as a checksum mismatch.")
@pytest.mark.parametrize("later", [False, True], ids=["at-once", "later"])
def test_same_size_edit_with_mtime_reset_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   later: bool) -> None:
    good = b"1::1::5::1\n1::2::3::2\n"
    monkeypatch.setitem(REGISTRY, "toy", _toy_spec(good))
    path = tmp_path / "toy" / "ratings.dat"
    path.parent.mkdir()
    path.write_bytes(good)
    if later:  # trust a just-written file at once (the memo's racy-file guard off) and edit it later
        monkeypatch.setattr(dl, "RACY_NS", 0, raising=False)
    assert ensure_files("toy", tmp_path, download=False).release == "complete"
    if later:
        memo = json.loads((dl.cache_dir() / dl.MEMO_NAME).read_text())["entries"]
        assert str(path.resolve()) in memo  # the memo was written: the test is not vacuous
        time.sleep(0.05)
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"9")  # same size, same inode
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(ChecksumError, match="Checksum mismatch"):
        ensure_files("toy", tmp_path, download=False)


# ------------------------------------------------------------------- 3. an unusable cache folder


def _read_only_enforced(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    return False


@bad_input(case="The processed-data cache folder cannot be used: it is a regular file, read-only or full.",
           handling="The cache is optional: one warning names the folder, and the data is loaded without it.")
@pytest.mark.parametrize("kind", ["file", "read-only", "full"])
def test_unusable_cache_folder_warns_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   kind: str) -> None:
    cache = tmp_path / "cache-root"
    if kind == "file":
        cache.write_text("not a folder")
    elif kind == "read-only":
        (cache / "processed").mkdir(parents=True)
        (cache / "processed").chmod(0o555)
        if not _read_only_enforced(cache / "processed"):
            pytest.skip("running as root: folder permissions are not enforced")
    else:
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(dl.os, "fsync", full)
    try:
        with pytest.warns(RuntimeWarning) as record:
            data = load("synthetic", cache=cache, **SYNTHETIC)
    finally:
        if kind == "read-only":
            (cache / "processed").chmod(0o755)
    messages = [str(w.message) for w in record if "cache" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert str(cache / "processed") in messages[0] and "without" in messages[0]
    assert data.provenance["counts"]["users_kept"] > 0
    if kind != "file":
        assert list((cache / "processed").iterdir()) == []  # no half-written or temporary file


# ------------------------------------------------------------ 4. corrupt .gz and zip members


def _corrupt_gz(path: Path, content: bytes) -> None:
    data = bytearray(gzip.compress(content * 50))
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncated_gz(path: Path, content: bytes) -> None:
    data = gzip.compress(content * 50)
    path.write_bytes(data[:-6])  # the end of the stream and the trailer cut off


def _tiny_gz(path: Path, content: bytes) -> None:
    path.write_bytes(b"\x1f\x8b")


@bad_input(case="A gzip-compressed raw file (.gz) is corrupt, truncated or not gzip at all.",
           handling="A checksum error names the file, says it is corrupt and says to delete it and "
                    "supply or download a good copy.")
@pytest.mark.parametrize("damage, verify", [(_corrupt_gz, True), (_truncated_gz, True), (_tiny_gz, True),
                                            (_tiny_gz, False)],
                         ids=["flipped", "truncated", "tiny", "tiny-unverified"])
def test_corrupt_gz_is_a_checksum_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage,
                                        verify: bool) -> None:
    content = b"1::1::5::1\n"
    monkeypatch.setitem(REGISTRY, "toy", _toy_spec(content * 50))
    gz = tmp_path / "toy" / "ratings.dat.gz"
    gz.parent.mkdir()
    damage(gz, content)
    with pytest.raises(ChecksumError) as err:
        ensure_files("toy", tmp_path, download=False, verify=verify).provenance()
    msg = str(err.value)
    assert str(gz) in msg and "corrupt" in msg and "Delete it" in msg


@bad_input(case="A member of a zip archive read in place (Book-Crossing's BX-CSV-Dump.zip) fails its CRC check.",
           handling="A checksum error names the archive member, says it is corrupt and says to replace the archive.")
def test_zip_member_with_bad_crc_is_a_checksum_error(tmp_path: Path) -> None:
    archive = tmp_path / "book-crossing" / "BX-CSV-Dump.zip"
    archive.parent.mkdir()
    body = b'"User-ID";"ISBN";"Book-Rating"\r\n' + b'"1";"0000000001";"5"\r\n' * 100
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name in ("BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv"):
            zf.writestr(name, body)
    data = bytearray(archive.read_bytes())
    data[data.index(body) + 100] ^= 0x01  # stored, so the member's bytes appear verbatim
    archive.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        ensure_files("book-crossing", tmp_path)
    msg = str(err.value)
    assert str(archive / "BX-Book-Ratings.csv") in msg and "corrupt" in msg and "Delete it" in msg


# ----------------------------------------------------------- 5. fixes that name the CLI as well


@bad_input(case="A raw file fails its checksum while the user works from the mamo-lite command line.",
           handling="The message gives the Python option (ensure_files(..., verify=False)) and says what "
                    "to do on the command line, which always verifies: replace the file.")
@pytest.mark.parametrize("where", ["file", "archive"])
def test_checksum_fix_names_python_and_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    where: str) -> None:
    good = b"1::1::5::1\n"
    monkeypatch.setitem(REGISTRY, "toy", _toy_spec(good))
    if where == "file":
        (tmp_path / "toy").mkdir()
        (tmp_path / "toy" / "ratings.dat").write_bytes(b"1::1::4::1\n")
    else:  # a hand-supplied archive that is not the expected one
        source = Source("zip-extract", "toy/toy.zip", url="https://example.invalid/toy.zip",
                        sha256=_sha(b"zip"), nbytes=3)
        ident = (Identity("complete", len(good), sha256=_sha(good)),)
        spec = DatasetSpec("toy", "Toy", (FileSpec("ratings", "toy/ratings.dat", ident, "ascii", source,
                                                   member="ratings.dat"),), citation="-", terms="-",
                           homepage="-")
        monkeypatch.setitem(REGISTRY, "toy", spec)
        (tmp_path / "toy").mkdir()
        with zipfile.ZipFile(tmp_path / "toy" / "toy.zip", "w") as zf:
            zf.writestr("ratings.dat", good)
    with pytest.raises(ChecksumError) as err:
        ensure_files("toy", tmp_path, download=False)
    msg = str(err.value)
    assert "ensure_files('toy', verify=False)" in msg and "command line" in msg
    assert "or pass verify=False" not in msg  # the old, Python-only advice


# ----------------------------------------------------------------- 6. a mistyped data folder


@bad_input(case="$MAMO_LITE_DATA (or data_dir) names a folder that does not exist, e.g. a typo.",
           handling="A failed lookup or download creates no folders, and the message says the data "
                    "folder does not exist.")
@pytest.mark.parametrize("download", [True, False])
def test_mistyped_data_root_leaves_no_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              download: bool) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/ratings.dat"
    monkeypatch.setitem(REGISTRY, "toy", _toy_spec(b"x", url=url))
    typo = tmp_path / "dtaa" / "root"
    monkeypatch.setenv("MAMO_LITE_DATA", str(typo))
    with pytest.raises(DownloadError if download else MissingDataError) as err:
        ensure_files("toy", download=download, progress=False, timeout=5)
    assert "does not exist" in str(err.value) and str(typo) in str(err.value)
    assert not (tmp_path / "dtaa").exists()


# -------------------------------------------------------------------- 7. duplicate ratings


@bad_input(case="A ratings file rates the same item twice for one user (same time or not).",
           handling="The last rating by time is kept (the later line on a tie); a warning and the "
                    "dataset's notes give the count.")
@pytest.mark.parametrize("timestamp, kept", [(b"975790500", 2.0), (b"975790000", 2.0), (b"975789000", 4.0)],
                         ids=["later", "same-time", "earlier"])
def test_duplicate_ml_ratings_keep_the_last(tmp_path: Path, timestamp: bytes, kept: float) -> None:
    root = copy_fixtures(tmp_path)
    ratings = root / "ml-1m" / "ratings.dat"
    ratings.write_bytes(ratings.read_bytes().rstrip(b"\n") + b"\n1::3::2::" + timestamp + b"\n")
    before = parse_movielens_1m(paths(ML1M_FILES))
    with pytest.warns(UserWarning, match=r"ratings\.dat: 1 duplicate rating"):
        raw = parse_movielens_1m(paths(ML1M_FILES, root))
    r = raw.ratings
    assert len(r) == len(before.ratings)
    assert r.loc[(r["user"] == 1) & (r["item"] == 3), "rating"].tolist() == [kept]
    assert any("1 duplicate rating" in n for n in raw.notes)


@bad_input(case="Book-Crossing's ratings file has two rows for the same user and ISBN.",
           handling="The later row is kept; a warning and the dataset's notes give the count.")
def test_duplicate_bx_ratings_keep_the_last(tmp_path: Path) -> None:
    root = copy_fixtures(tmp_path)
    ratings = root / "book-crossing" / "BX-Book-Ratings.csv"
    first = ratings.read_bytes().split(b"\n")[1]  # "10";"0000000001";"5"
    ratings.write_bytes(ratings.read_bytes().rstrip(b"\r\n") + b"\r\n" + first.replace(b'"5"', b'"9"') + b"\r\n")
    with pytest.warns(UserWarning, match=r"1 duplicate rating of the same user and item \(1 pair"):  # the fixture's own: user 10, ISBN 2
        before = parse_book_crossing(paths(BX_FILES))
    with pytest.warns(UserWarning, match=r"2 duplicate ratings of the same user and item \(2 pairs"):
        raw = parse_book_crossing(paths(BX_FILES, root))
    r = raw.ratings
    assert len(r) == len(before.ratings)
    first_item = int(before.ratings.iloc[0]["item"])
    assert r.loc[(r["user"] == 10) & (r["item"] == first_item), "rating"].tolist() == [9.0]


def test_merged_movies_are_not_duplicate_ratings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = parse_movielens_1m(paths(ML1M_FILES))  # 860 → 811 is MeLU's merge rule, kept as it is
    assert not any("duplicate rating" in n for n in raw.notes)


# ------------------------------------------------------------------------ 8. stale temporary files


def _aged(path: Path, seconds: float) -> Path:
    path.write_bytes(b"partial")
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


@bad_input(case="A download, extraction or cache write was killed (SIGKILL, power loss) and left its "
                "temporary file behind.",
           handling="Temporary files of mamo_lite's own naming pattern older than 15 minutes are removed by "
                    "the next write to that folder; fresh ones (a concurrent writer's) are left alone.")
@pytest.mark.parametrize("writer", ["download", "cache"])
def test_stale_temporary_files_are_removed(tmp_path: Path, writer: str) -> None:
    if writer == "download":
        folder = tmp_path / "dl"
        folder.mkdir()
        src = tmp_path / "src.bin"
        src.write_bytes(b"payload")
        stale = _aged(folder / ".ok.bin.k3j5h2a9.part", 3600)
        fresh = _aged(folder / ".ok.bin.z8y7x6w5.part", 10)
        dl.download(src.as_uri(), folder / "ok.bin", sha256=_sha(b"payload"), progress=False)
    else:
        folder = tmp_path / "cache-root" / "processed"
        folder.mkdir(parents=True)
        stale = _aged(folder / ".synthetic-0123456789abcdef.npz.k3j5h2a9.tmp", 3600)
        fresh = _aged(folder / ".synthetic-0123456789abcdef.npz.z8y7x6w5.tmp", 10)
        load("synthetic", cache=tmp_path / "cache-root", **SYNTHETIC)
    other = [_aged(folder / name, 3600) for name in (".hidden.tmp", "notes.part", "user.k3j5h2a9.tmp")]
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() for p in other)


# -------------------------------------------------------------------- 9. integers beyond int64


@bad_input(case="A parsed file holds an integer too large for 64 bits (e.g. a user id of 20 digits).",
           handling="A parse error names the file, line and field, says the value does not fit in a "
                    "64-bit integer, and says how to fix the file.")
@pytest.mark.parametrize("dataset", ["movielens-1m", "book-crossing"])
def test_integer_beyond_int64_is_a_parse_error(tmp_path: Path, dataset: str) -> None:
    root = copy_fixtures(tmp_path)
    big = b"99999999999999999999"
    if dataset == "movielens-1m":
        edit(root / "ml-1m" / "ratings.dat", b"1::3::4::975790000", big + b"::3::4::975790000")
        parse, files, field = parse_movielens_1m, ML1M_FILES, "user"
    else:
        edit(root / "book-crossing" / "BX-Book-Ratings.csv", b'"10";"0000000001"', b'"' + big + b'";"0000000001"')
        parse, files, field = parse_book_crossing, BX_FILES, "User-ID"
    with pytest.raises(ParseError) as err:
        parse(paths(files, root))
    e = err.value
    assert e.line == (2 if dataset == "book-crossing" else 1)
    assert e.field == field and "64-bit" in str(e) and big.decode() in str(e) and "Fix:" in str(e)
