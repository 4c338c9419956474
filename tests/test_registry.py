"""Dataset registry: data-root resolution, messages, checksums (sha256 and git blob id), ``.gz`` and
zip-member files, the digest memo, and (when ``MAMO_LITE_DATA`` is set) the real data."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from mamo_lite.data import download as dl
from mamo_lite.data.errors import ChecksumError, DataError, MissingDataError
from mamo_lite.data.registry import (
    BX_DEAD_URL,
    REGISTRY,
    DatasetSpec,
    FileSpec,
    Identity,
    Source,
    cache_dir,
    data_root,
    ensure_files,
    open_text,
    sha256_file,
)

REAL_DATA = os.environ.get("MAMO_LITE_DATA")  # read before the autouse fixture clears it


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMO_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MAMO_LITE_DATA", raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob_by_hand(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ------------------------------------------------------------------------------------ registry


def test_registry_layout() -> None:
    expected = {
        "movielens-1m": {"ratings": "ml-1m/ratings.dat", "users": "ml-1m/users.dat",
                         "movies": "ml-1m/movies.dat", "extrainfos": "ml-1m-extra/movies_extrainfos.dat"},
        "movielens-100k": {k: f"ml-100k/u.{k}" for k in ("data", "user", "item", "genre", "occupation")},
        "book-crossing": {"ratings": "book-crossing/BX-Book-Ratings.csv",
                          "books": "book-crossing/BX-Books.csv", "users": "book-crossing/BX-Users.csv"},
    }
    assert set(REGISTRY) == set(expected)
    for name, files in expected.items():
        spec = REGISTRY[name]
        assert {f.logical: f.relpath for f in spec.files} == files
        for f in spec.files:
            for ident in f.identities:
                digest = ident.sha256 or ident.git_blob or ""
                assert re.fullmatch(r"[0-9a-f]{64}" if ident.sha256 else r"[0-9a-f]{40}", digest)
            assert f.source.url is None or f.source.url.startswith("https://")
    ratings = REGISTRY["movielens-1m"].file("ratings")
    assert {i.release for i in ratings.identities} == {"complete", "subset"}
    assert REGISTRY["book-crossing"].file("books").source.url is None  # no live URL


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"name='ml-1m'.*movielens-1m"):
        ensure_files("ml-1m", tmp_path)


# ------------------------------------------------------------------------------------ location


def test_data_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAMO_LITE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mamo_lite"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mamo_lite"
    monkeypatch.setenv("MAMO_LITE_CACHE", "rel-cache")
    assert cache_dir() == tmp_path / "rel-cache"

    assert data_root() == cache_dir()  # nothing else given: the cache
    monkeypatch.setenv("MAMO_LITE_DATA", "../shared/data")  # relative: against the cwd
    assert data_root() == tmp_path / ".." / "shared" / "data"
    monkeypatch.setenv("MAMO_LITE_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    assert data_root("rel-arg") == tmp_path / "rel-arg"
    monkeypatch.setenv("MAMO_LITE_DATA", "")  # empty means unset
    assert data_root() == cache_dir()


# ------------------------------------------------------------------------------------ messages


def test_missing_book_crossing_message(tmp_path: Path) -> None:
    for download in (True, False):  # never downloadable
        with pytest.raises(MissingDataError) as err:
            ensure_files("book-crossing", tmp_path, download=download)
        msg = str(err.value)
        folder = str(tmp_path / "book-crossing")
        for needle in (folder, "BX-CSV-Dump.zip", "BX-Book-Ratings.csv", "BX-Books.csv", "BX-Users.csv",
                       "BX-Books.csv.gz", "gzip", BX_DEAD_URL, "dead", "Kaggle", "Ziegler", "WWW 2005",
                       REGISTRY["book-crossing"].file("users").identities[0].sha256):
            assert needle in msg, needle
    assert not (tmp_path / "book-crossing").exists()  # nothing created


def test_missing_movielens_message_without_download(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as err:
        ensure_files("movielens-100k", tmp_path, download=False)
    msg = str(err.value)
    for needle in ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", str(tmp_path / "ml-100k"),
                   "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", "download=True",
                   "u.data", "u.occupation", "MAMO_LITE_DATA"):
        assert needle in msg, needle


def test_checksum_error_names_file_expected_and_got(tmp_path: Path) -> None:
    bad = tmp_path / "ml-100k" / "u.data"
    bad.parent.mkdir()
    bad.write_bytes(b"1\t2\t3\t4\n")
    with pytest.raises(ChecksumError) as err:
        ensure_files("movielens-100k", tmp_path, download=False)
    msg = str(err.value)
    assert str(bad) in msg and "'data'" in msg
    assert "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490" in msg  # expected
    assert _sha(b"1\t2\t3\t4\n") in msg and "8 bytes" in msg  # got
    assert "ml-100k.zip" in msg and "verify=False" in msg  # the fix
    assert bad.exists()  # never deleted behind the user's back


# ---------------------------------------------------------------- identities and the git blob id


def test_git_blob_id_matches_git_hash_object(tmp_path: Path) -> None:
    data = b"1::1193::5::978300760\r\n1::661::3::978302109\n"
    path = tmp_path / "ratings.dat"
    path.write_bytes(data)
    assert dl.git_blob_id(path) == _git_blob_by_hand(data)
    assert _git_blob_by_hand(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"  # git's known id
    if shutil.which("git"):
        out = subprocess.run(["git", "hash-object", "--no-filters", str(path)], capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == _git_blob_by_hand(data)
    gz = tmp_path / "ratings.dat.gz"
    gz.write_bytes(gzip.compress(data))
    assert dl.git_blob_id(gz) == _git_blob_by_hand(data)  # of the decompressed content


def _ratings_like_spec(complete: bytes, subset: bytes) -> DatasetSpec:
    """One file accepted as ``complete`` by git blob id or ``subset`` by sha256, like ML-1M ratings."""
    source = Source("file", "toy/ratings.dat", url="https://example.invalid/ratings.dat",
                    sha256=_sha(complete), nbytes=len(complete))
    identities = (
        Identity("complete", len(complete), git_blob=_git_blob_by_hand(complete), note="official"),
        Identity("subset", len(subset), sha256=_sha(subset), note="first user only"),
    )
    return DatasetSpec("toy", "Toy", (FileSpec("ratings", "toy/ratings.dat", identities, "ascii", source),),
                       citation="-", terms="-", homepage="-")


def test_release_from_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    complete = b"1::1::5::1\n1::2::3::2\n2::1::4::3\n"
    subset = b"1::1::5::1\n1::2::3::2\n"
    monkeypatch.setitem(REGISTRY, "toy", _ratings_like_spec(complete, subset))
    path = tmp_path / "toy" / "ratings.dat"
    path.parent.mkdir()

    path.write_bytes(complete)
    raw = ensure_files("toy", tmp_path, download=False)
    assert raw.release == "complete" and raw.sha256["ratings"] == _sha(complete)

    path.write_bytes(subset)
    assert ensure_files("toy", tmp_path, download=False).release == "subset"

    other = b"1::1::5::1\n1::2::3::2\n2::1::1::3\n"  # same size as `complete`, different content
    path.write_bytes(other)
    with pytest.raises(ChecksumError) as err:
        ensure_files("toy", tmp_path, download=False)
    msg = str(err.value)
    assert _git_blob_by_hand(complete) in msg and _sha(subset) in msg  # both accepted versions
    assert _sha(other) in msg and _git_blob_by_hand(other) in msg  # what was found

    raw = ensure_files("toy", tmp_path, download=False, verify=False)
    assert raw.release == "unverified" and raw.sha256 == {}
    assert raw.provenance() == {"ratings": {"path": str(path), "sha256": None, "bytes": len(other)}}


# --------------------------------------------------------------------------- .gz and zip members


def test_gz_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "1::Toy Story (1995)::Animation\r\n2::Café (1999)::Drama\r\n"
    data = text.encode("latin-1")
    gz = tmp_path / "toy" / "ratings.dat.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(data))
    assert sha256_file(gz) == _sha(data)
    assert dl.content_size(gz) == len(data)
    with open_text(gz, "latin-1") as f:
        assert f.read() == text.replace("\r\n", "\n")
    with open_text(gz, "latin-1", newline="") as f:
        assert f.read() == text

    monkeypatch.setitem(REGISTRY, "toy", _ratings_like_spec(data, b"x"))
    raw = ensure_files("toy", tmp_path, download=False)
    assert raw.paths["ratings"] == gz and raw.release == "complete"
    assert raw.provenance()["ratings"]["bytes"] == len(data)
    (tmp_path / "toy" / "ratings.dat").write_bytes(data)  # a plain copy is preferred
    assert ensure_files("toy", tmp_path, download=False).paths["ratings"] == tmp_path / "toy" / "ratings.dat"


def _bx_zip(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


FAKE_BX = {
    "BX-Book-Ratings.csv": b'"User-ID";"ISBN";"Book-Rating"\r\n"276725";"034545104X";"0"\r\n',
    "BX-CSV-Dump/BX-Books.csv": b'"ISBN";"Book-Title"\r\n"0195153448";"Classical Mythology"\r\n',  # nested
    "BX-Users.csv": b'"User-ID";"Location";"Age"\r\n"1";"nyc, new york, usa";NULL\r\n',
}


def test_book_crossing_zip_read_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "book-crossing" / "BX-CSV-Dump.zip"
    _bx_zip(archive, FAKE_BX)
    raw = ensure_files("book-crossing", tmp_path, verify=False)
    assert raw.release == "unverified"
    assert raw.paths == {"ratings": archive / "BX-Book-Ratings.csv",
                         "books": archive / "BX-CSV-Dump/BX-Books.csv", "users": archive / "BX-Users.csv"}
    assert dl.split_zip_member(raw.paths["books"]) == (archive, "BX-CSV-Dump/BX-Books.csv")
    with open_text(raw.paths["users"], "latin-1") as f:
        assert f.readline() == '"User-ID";"Location";"Age"\n'
    assert sha256_file(raw.paths["ratings"]) == _sha(FAKE_BX["BX-Book-Ratings.csv"])
    assert raw.provenance()["books"]["bytes"] == len(FAKE_BX["BX-CSV-Dump/BX-Books.csv"])
    assert sorted(p.name for p in archive.parent.iterdir()) == ["BX-CSV-Dump.zip"]  # nothing extracted

    with pytest.raises(ChecksumError) as err:  # these are not the real CSVs
        ensure_files("book-crossing", tmp_path)
    msg = str(err.value)
    assert str(archive / "BX-Book-Ratings.csv") in msg
    assert REGISTRY["book-crossing"].file("ratings").identities[0].sha256 in msg
    assert _sha(FAKE_BX["BX-Book-Ratings.csv"]) in msg


def test_book_crossing_zip_lacking_a_member(tmp_path: Path) -> None:
    archive = tmp_path / "book-crossing" / "BX-CSV-Dump.zip"
    _bx_zip(archive, {k: v for k, v in FAKE_BX.items() if "Users" not in k})
    with pytest.raises(MissingDataError, match=r"BX-CSV-Dump.zip is present but lacks BX-Users.csv"):
        ensure_files("book-crossing", tmp_path, verify=False)


def test_book_crossing_mixed_plain_gz(tmp_path: Path) -> None:
    folder = tmp_path / "book-crossing"
    folder.mkdir()
    (folder / "BX-Book-Ratings.csv").write_bytes(FAKE_BX["BX-Book-Ratings.csv"])
    (folder / "BX-Books.csv.gz").write_bytes(gzip.compress(FAKE_BX["BX-CSV-Dump/BX-Books.csv"]))
    (folder / "BX-Users.csv.gz").write_bytes(gzip.compress(FAKE_BX["BX-Users.csv"]))
    raw = ensure_files("book-crossing", tmp_path, verify=False)
    names = [p.name for p in raw.paths.values()]
    assert names == ["BX-Book-Ratings.csv", "BX-Books.csv.gz", "BX-Users.csv.gz"]


# ------------------------------------------------------------------------------------- memo


def test_digest_memo_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "RACY_NS", 0)  # memoise files written a moment ago (see test_racy_files_...)
    path = tmp_path / "f.dat"
    path.write_bytes(b"some content\n")
    digest = sha256_file(path)
    memo = json.loads((cache_dir() / dl.MEMO_NAME).read_text())["entries"]
    entry = memo[str(path.resolve())]
    st = path.stat()
    assert entry == {"sha256": digest, "bytes": 13, "git_blob": None, "size": 13, "mtime_ns": st.st_mtime_ns,
                     "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}
    assert [p.name for p in cache_dir().iterdir()] == [dl.MEMO_NAME]  # written atomically: no temp left

    calls: list[Path] = []
    real_hash = dl._hash

    def counting_hash(p: Path, blob_size: int | None) -> dl.Digests:
        calls.append(p)
        return real_hash(p, blob_size)

    monkeypatch.setattr(dl, "_hash", counting_hash)
    assert sha256_file(path) == digest and calls == []  # memo hit
    blob = dl.git_blob_id(path)  # the blob id is added to the same entry
    assert blob == _git_blob_by_hand(b"some content\n") and len(calls) == 1
    assert dl.git_blob_id(path) == blob and len(calls) == 1

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: recompute
    assert sha256_file(path) == digest and len(calls) == 2
    path.write_bytes(b"other content\n")  # changed: new digest
    assert sha256_file(path) == _sha(b"other content\n") and len(calls) == 3

    (cache_dir() / dl.MEMO_NAME).write_text("{not json")  # a corrupt memo is ignored, then rewritten
    assert sha256_file(path) == _sha(b"other content\n") and len(calls) == 4
    assert json.loads((cache_dir() / dl.MEMO_NAME).read_text())["version"] == 1


def test_racy_files_are_not_memoised(tmp_path: Path) -> None:
    """A file changed just before it was hashed could change again within the same timestamp tick."""
    path = tmp_path / "f.dat"
    path.write_bytes(b"some content\n")
    assert sha256_file(path) == _sha(b"some content\n")
    assert not (cache_dir() / dl.MEMO_NAME).exists()
    old = time.time() - 60
    os.utime(path, (old, old))  # the mtime is old now, but the ctime is not
    sha256_file(path)
    assert not (cache_dir() / dl.MEMO_NAME).exists()


def test_digest_memo_for_zip_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dl, "RACY_NS", 0)
    archive = tmp_path / "a.zip"
    _bx_zip(archive, {"x.csv": b"x\n"})
    assert sha256_file(archive / "x.csv") == _sha(b"x\n")
    monkeypatch.setattr(dl, "_hash", lambda *a: pytest.fail("memo not used"))
    assert sha256_file(archive / "x.csv") == _sha(b"x\n")


# --------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not REAL_DATA or not Path(REAL_DATA).is_dir(),
                    reason="real data: set MAMO_LITE_DATA to a folder laid out like ../shared/data")
@pytest.mark.parametrize("name, release", [("movielens-1m", "subset"), ("movielens-100k", "complete"),
                                           ("book-crossing", "complete")])
def test_real_data(name: str, release: str) -> None:
    raw = ensure_files(name, REAL_DATA, download=False)
    assert raw.release == release
    assert set(raw.paths) == {f.logical for f in REGISTRY[name].files}
    prov = raw.provenance()
    for f in REGISTRY[name].files:
        assert prov[f.logical]["sha256"] in {i.sha256 for i in f.identities}
        assert prov[f.logical]["bytes"] in {i.nbytes for i in f.identities}
    encoding = REGISTRY[name].files[0].encoding
    with open_text(raw.paths[REGISTRY[name].files[0].logical], encoding) as fh:
        assert fh.readline()
    assert ensure_files(name, REAL_DATA, download=False) == raw  # again, from the digest memo
