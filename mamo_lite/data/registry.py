"""Dataset registry: where each raw file lives, what it must hash to, and how to obtain it.

``REGISTRY`` maps a dataset name to a frozen :class:`DatasetSpec`; :func:`ensure_files` turns a
name into verified local files (:class:`RawFiles`), downloading what is missing when it may.

Layout below a *data root* (the one of ``../shared/data``)::

    ml-1m/{ratings,users,movies}.dat, README        <- ml-1m.zip (GroupLens), extracted
    ml-1m-extra/movies_extrainfos.dat               <- MeLU repository (raw GitHub URL)
    ml-100k/u.{data,user,item,genre,occupation}, README, u.info   <- ml-100k.zip, extracted
    book-crossing/BX-{Book-Ratings,Books,Users}.csv[.gz]  or  book-crossing/BX-CSV-Dump.zip

Any file may also be stored gzip-compressed (``name.gz``); checksums are always of the
decompressed content. Book-Crossing's ``BX-CSV-Dump.zip`` is read in place: ``RawFiles.paths``
then points *into* the archive (``.../BX-CSV-Dump.zip/BX-Books.csv``, see
:mod:`mamo_lite.data.download`). Always read raw files with :func:`open_text`.

Location of the data root: explicit ``data_dir`` > ``$MAMO_LITE_DATA`` (relative to the cwd) >
:func:`cache_dir` (``$MAMO_LITE_CACHE``, ``$XDG_CACHE_HOME/mamo_lite`` or ``~/.cache/mamo_lite``).

Checksums and where they come from:

* ``ml-1m.zip``: 5,917,549 bytes, sha256 ``a6898adb…54e20`` as pinned in tensorflow/datasets
  (``tensorflow_datasets/url_checksums/movielens.txt``) and independently in several other public
  projects; md5 ``c4d9eecf…90906`` as published by GroupLens (``ml-1m.zip.md5``).
* ``ml-100k.zip``: 4,924,029 bytes, sha256 ``50d2a982…a3229`` (same TFDS file and others); md5
  ``0e33842e…c0723`` (GroupLens ``ml-100k.zip.md5``).
* Extracted files: sha256 from ``../shared/data/PROVENANCE.md``. The official ML-1M
  ``ratings.dat`` (24,594,131 bytes, 1,000,209 lines) is identified by its git blob id; the
  users 1–2999 subset of ``../shared/data`` by its sha256 (release ``subset``).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from mamo_lite.data.download import (
    Digests,
    cache_dir,
    content_size,
    download,
    extract_zip,
    file_digests,
    open_binary,
    sha256_file,
    split_zip_member,
)
from mamo_lite.data.errors import ChecksumError, DataError, DownloadError, MissingDataError
from mamo_lite.data.raw import Release

__all__ = [
    "REGISTRY",
    "DatasetSpec",
    "FileSpec",
    "Identity",
    "RawFiles",
    "Source",
    "available",
    "cache_dir",
    "data_root",
    "ensure_files",
    "open_text",
    "sha256_file",
]


# ------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Identity:
    """One accepted version of a file: its sha256 or git blob id, size and the release it stands for."""

    release: Literal["complete", "subset"]
    nbytes: int
    sha256: str | None = None
    git_blob: str | None = None
    note: str = ""

    def describe(self) -> str:
        digest = f"sha256 {self.sha256}" if self.sha256 else f"git blob id {self.git_blob}"
        note = f"; {self.note}" if self.note else ""
        return f"{digest} ({self.nbytes:,} bytes, release {self.release!r}{note})"


@dataclass(frozen=True)
class Source:
    """Where files come from.

    ``kind``: ``"file"`` (the URL is the file itself), ``"zip-extract"`` (a zip that is downloaded,
    or supplied by the user, into ``relpath`` and whose members are extracted next to it) or
    ``"zip-inplace"`` (a user-supplied zip whose members are read without extracting).
    """

    kind: Literal["file", "zip-extract", "zip-inplace"]
    relpath: str
    url: str | None = None
    sha256: str | None = None
    nbytes: int | None = None
    md5: str | None = None
    strip_prefix: str = ""
    extras: tuple[str, ...] = ()
    checksum_source: str = ""


@dataclass(frozen=True)
class FileSpec:
    """One raw file: logical name, path below the data root, accepted identities, how to get it."""

    logical: str
    relpath: str
    identities: tuple[Identity, ...]
    encoding: str
    source: Source
    member: str | None = None

    @property
    def filename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its files, a human title, citation, terms and (if any) extra help to obtain it."""

    name: str
    title: str
    files: tuple[FileSpec, ...]
    citation: str
    terms: str
    homepage: str

    def file(self, logical: str) -> FileSpec:
        """The :class:`FileSpec` with logical name ``logical``."""
        for spec in self.files:
            if spec.logical == logical:
                return spec
        raise KeyError(f"{self.name} has no file {logical!r}; known: {[f.logical for f in self.files]}")


def _complete(sha256: str, nbytes: int) -> tuple[Identity, ...]:
    return (Identity("complete", nbytes, sha256=sha256),)


_ML1M_ZIP = Source(
    "zip-extract",
    "ml-1m/ml-1m.zip",
    url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    nbytes=5_917_549,
    md5="c4d9eecfca2ab87c1945afe126590906",
    strip_prefix="ml-1m/",
    extras=("ml-1m/README",),
    checksum_source=("sha256/size: tensorflow/datasets url_checksums/movielens.txt; "
                     "md5: GroupLens ml-1m.zip.md5"),
)
_ML1M_EXTRA = Source(
    "file",
    "ml-1m-extra/movies_extrainfos.dat",
    url="https://raw.githubusercontent.com/hoyeoplee/MeLU/master/movielens/ml-1m/movies_extrainfos.dat",
    sha256="18432b1713b66a5262c11f6d929801a6e6f414d861cd2adf191dfba61e45c74d",
    nbytes=3_309_481,
    checksum_source="../shared/data/PROVENANCE.md (MeLU commit f70c8ff)",
)
_ML100K_ZIP = Source(
    "zip-extract",
    "ml-100k/ml-100k.zip",
    url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    nbytes=4_924_029,
    md5="0e33842e24a9c977be4e0107933c0723",
    strip_prefix="ml-100k/",
    extras=("ml-100k/README", "ml-100k/u.info"),
    checksum_source=("sha256/size: tensorflow/datasets url_checksums/movielens.txt; "
                     "md5: GroupLens ml-100k.zip.md5"),
)
_BX_ZIP = Source("zip-inplace", "book-crossing/BX-CSV-Dump.zip")

BX_DEAD_URL = "http://www2.informatik.uni-freiburg.de/~cziegler/BX/BX-CSV-Dump.zip"
"""The original Book-Crossing download; dead for years."""

_ML_TERMS = "research use only, no redistribution, no commercial use (GroupLens terms)"
_ML_CITATION = "F. M. Harper and J. A. Konstan, The MovieLens Datasets: History and Context, ACM TiiS 2015"


def _ml100k_file(logical: str, name: str, sha256: str, nbytes: int) -> FileSpec:
    return FileSpec(logical, f"ml-100k/{name}", _complete(sha256, nbytes), "latin-1", _ML100K_ZIP,
                    member=f"ml-100k/{name}")


def _bx_file(logical: str, name: str, sha256: str, nbytes: int) -> FileSpec:
    return FileSpec(logical, f"book-crossing/{name}", _complete(sha256, nbytes), "latin-1", _BX_ZIP,
                    member=name)


REGISTRY: dict[str, DatasetSpec] = {
    "movielens-1m": DatasetSpec(
        name="movielens-1m",
        title="MovieLens 1M (+ MeLU movie metadata)",
        files=(
            FileSpec(
                "ratings",
                "ml-1m/ratings.dat",
                (
                    Identity("complete", 24_594_131, git_blob="77a7c4b150f588c23bb9e1f068aa996c0b413695",
                             note="the official file, 1,000,209 ratings"),
                    Identity("subset", 11_908_773,
                             sha256="1273c4edfe3c0ff9e3a0a0d55819faeb947da0ad7df3927333b51ebefbeedc3d",
                             note="users 1-2999 only, 487,650 ratings"),
                ),
                "latin-1",
                _ML1M_ZIP,
                member="ml-1m/ratings.dat",
            ),
            FileSpec("users", "ml-1m/users.dat",
                     _complete("1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3", 134_368),
                     "latin-1", _ML1M_ZIP, member="ml-1m/users.dat"),
            FileSpec("movies", "ml-1m/movies.dat",
                     _complete("0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9", 171_308),
                     "latin-1", _ML1M_ZIP, member="ml-1m/movies.dat"),
            FileSpec("extrainfos", "ml-1m-extra/movies_extrainfos.dat",
                     _complete(_ML1M_EXTRA.sha256 or "", _ML1M_EXTRA.nbytes or 0), "utf-8", _ML1M_EXTRA),
        ),
        citation=_ML_CITATION + "; movie metadata: H. Lee et al., MeLU, KDD 2019",
        terms=_ML_TERMS,
        homepage="https://grouplens.org/datasets/movielens/1m/",
    ),
    "movielens-100k": DatasetSpec(
        name="movielens-100k",
        title="MovieLens 100K",
        files=(
            _ml100k_file("data", "u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                         1_979_173),
            _ml100k_file("user", "u.user", "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
                         22_628),
            _ml100k_file("item", "u.item", "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
                         236_344),
            _ml100k_file("genre", "u.genre",
                         "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb", 202),
            _ml100k_file("occupation", "u.occupation",
                         "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d", 193),
        ),
        citation=_ML_CITATION,
        terms=_ML_TERMS,
        homepage="https://grouplens.org/datasets/movielens/100k/",
    ),
    "book-crossing": DatasetSpec(
        name="book-crossing",
        title="Book-Crossing",
        files=(
            _bx_file("ratings", "BX-Book-Ratings.csv",
                     "f359084e5f350151b61f3d07acbe3c6ff0e2bd057d88901fa60507449d0e0e57", 30_682_276),
            _bx_file("books", "BX-Books.csv",
                     "b7a21c9332e39226758a3dce6365f1a5c23653514ca445b419b938adf5b41ce6", 77_787_439),
            _bx_file("users", "BX-Users.csv",
                     "5e5302cb2114bd8910ea2fcde17f3583f0a62bd8da512d5fa1b0c0c65803b898", 12_284_158),
        ),
        citation=("C.-N. Ziegler, S. M. McNee, J. A. Konstan and G. Lausen, Improving Recommendation Lists "
                  "Through Topic Diversification, WWW 2005"),
        terms="free for research use when acknowledged (cite Ziegler et al., WWW 2005)",
        homepage="http://www2.informatik.uni-freiburg.de/~cziegler/BX/ (dead)",
    ),
}
"""Every dataset mamo_lite can load from raw files, by name."""


# ---------------------------------------------------------------------------------- location


def data_root(data_dir: str | Path | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$MAMO_LITE_DATA`` (relative to the cwd), else
    :func:`cache_dir`. Returned absolute; not created."""
    if data_dir is not None and str(data_dir).strip():
        return Path(data_dir).expanduser().absolute()
    env = os.environ.get("MAMO_LITE_DATA", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    return cache_dir()


def open_text(
    path: str | Path, encoding: str, *, errors: str = "strict", newline: str | None = None
) -> TextIO:
    """Open a raw file as text: plain, gzip-compressed (``*.gz``) or a zip member path.

    ``newline`` is passed to :class:`io.TextIOWrapper` (``None``: universal newlines, CRLF read as
    ``\\n``; ``""`` for the :mod:`csv` module). Use the :class:`FileSpec` ``encoding``.
    """
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors=errors, newline=newline)


# ------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class RawFiles:
    """Verified local raw files of one dataset.

    ``paths``/``sha256``/``nbytes`` are keyed by logical name; ``sha256`` and ``nbytes`` describe the
    decompressed content. ``release`` is ``complete`` (every file is the official one), ``subset``
    (some file is a known subset, e.g. ML-1M users 1-2999) or ``unverified`` (``verify=False``;
    ``sha256`` is then empty). A path may point into a zip archive: read it with :func:`open_text`.
    """

    name: str
    root: Path
    paths: dict[str, Path]
    sha256: dict[str, str]
    release: Release
    nbytes: dict[str, int] = field(default_factory=dict)

    def provenance(self) -> dict[str, dict]:
        """``{logical: {"path": str, "sha256": str | None, "bytes": int}}`` for ``RawTables.files``."""
        return {
            logical: {
                "path": str(path),
                "sha256": self.sha256.get(logical),
                "bytes": self.nbytes[logical] if logical in self.nbytes else content_size(path),
            }
            for logical, path in self.paths.items()
        }


# ---------------------------------------------------------------------------------- ensure


def _spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"Unknown dataset name={name!r}; choose one of {sorted(REGISTRY)}.") from None


def _zip_member(archive: Path, wanted: str) -> str | None:
    """The member of ``archive`` named ``wanted``, or the only one whose base name is ``wanted``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as err:
        raise ChecksumError(
            f"{archive} is not a readable zip archive ({err}); delete it and supply a good copy."
        ) from err
    if wanted in names:
        return wanted
    base = wanted.rsplit("/", 1)[-1]
    matches = [n for n in names if n.rsplit("/", 1)[-1] == base and "__MACOSX" not in n]
    return matches[0] if len(matches) == 1 else None


def _locate(root: Path, spec: FileSpec) -> Path | None:
    """The present copy of ``spec`` below ``root``: plain, then ``.gz``, then in a read-in-place zip."""
    for candidate in (root / spec.relpath, root / (spec.relpath + ".gz")):
        if candidate.is_file():
            return candidate
    source = spec.source
    if source.kind == "zip-inplace" and spec.member and (root / source.relpath).is_file():
        member = _zip_member(root / source.relpath, spec.member)
        if member is not None:
            return root / source.relpath / member
    return None


def available(name: str, data_dir: str | Path | None = None) -> bool:
    """Whether the raw files of dataset ``name`` are on this machine, in the data root of :func:`data_root`.

    Only looks: nothing is downloaded, parsed or verified, so it is instant. ``"synthetic"`` (generated)
    is always available; MovieLens that is absent can still be downloaded by :func:`ensure_files`, while
    Book-Crossing cannot (chapters use this to skip their Book-Crossing sections when it is missing).
    """
    if name == "synthetic":
        return True
    root = data_root(data_dir)
    return all(_locate(root, f) is not None for f in _spec(name).files)


def _use_unverified(name: str) -> str:
    """How to use a file that fails verification anyway, for Python and command-line users."""
    return (f"To use it as it is anyway (release 'unverified'), call ensure_files({name!r}, verify=False) "
            "from Python; mamo_lite.data.load and the mamo-lite command line always verify, so there "
            "replace the file.")


def _absent_root_note(root: Path, explicit: bool) -> str:
    """A hint when an explicitly chosen data root does not exist (a typo?); else ``""``."""
    if not explicit or root.exists():
        return ""
    return (f"\nThe data folder {root} does not exist: check data_dir= (--data-dir) or $MAMO_LITE_DATA "
            "for a typo.")


def _verify(name: str, spec: FileSpec, path: Path) -> tuple[Identity, Digests]:
    """Match ``path`` against ``spec``'s identities; :class:`ChecksumError` if none matches."""
    digests = file_digests(path)
    for ident in spec.identities:
        if ident.sha256 == digests.sha256:
            return ident, digests
    if any(i.git_blob and i.nbytes == digests.nbytes for i in spec.identities):
        digests = file_digests(path, git_blob=True)
        for ident in spec.identities:
            if ident.git_blob and ident.git_blob == digests.git_blob:
                return ident, digests
    expected = " or ".join(i.describe() for i in spec.identities)
    blob = f", git blob id {digests.git_blob}" if digests.git_blob else ""
    source = spec.source
    if source.url:
        fix = (f"Delete it and load the dataset again (from Python or the mamo-lite command line) to "
               f"re-download it from {source.url}, or replace it with a good copy.")
    else:
        member = split_zip_member(path)
        folder = member[0].parent if member else path.parent
        fix = (f"Delete it and put a good copy of {spec.filename} (plain, .gz or inside {source.relpath}) "
               f"into {folder}; with the file absent, loading the dataset says where to get one.")
    raise ChecksumError(
        f"Checksum mismatch for {path} ({name} file {spec.logical!r}): expected {expected}; got sha256 "
        f"{digests.sha256} ({digests.nbytes:,} bytes{blob}). The file is corrupt, truncated or another "
        f"version. {fix} {_use_unverified(name)}"
    )


def _by_source(files: list[FileSpec]) -> dict[Source, list[FileSpec]]:
    by_source: dict[Source, list[FileSpec]] = {}
    for f in files:
        by_source.setdefault(f.source, []).append(f)
    return by_source


def _bx_missing_message(root: Path, spec: DatasetSpec, missing: list[FileSpec]) -> str:
    folder = root / "book-crossing"
    names = [f.filename for f in spec.files]
    lacking = ", ".join(f.filename for f in missing)
    zip_note = ""
    if (root / _BX_ZIP.relpath).is_file():
        zip_note = f" ({root / _BX_ZIP.relpath} is present but lacks {lacking})"
    sums = "; ".join(f"{f.filename}: {f.identities[0].sha256}" for f in spec.files)
    return (
        f"Book-Crossing files are missing: {lacking} not found in {folder}{zip_note}.\n"
        f"Book-Crossing cannot be downloaded automatically: its original URL ({BX_DEAD_URL}) is dead. "
        "Copies of BX-CSV-Dump.zip exist on mirrors (e.g. Kaggle: search 'Book-Crossing dataset').\n"
        f"Put into {folder} EITHER the archive BX-CSV-Dump.zip itself (read in place, not extracted), "
        f"OR the three CSV files {', '.join(names)}, plain or gzip-compressed "
        f"({', '.join(n + '.gz' for n in names)}).\n"
        f"They are verified by the sha256 of the decompressed CSVs: {sums}.\n"
        f"Data root: {root} (set it with data_dir= or $MAMO_LITE_DATA).\n"
        f"Book-Crossing is {spec.terms}: {spec.citation}."
    )


def _ml_missing_message(
    root: Path, spec: DatasetSpec, missing: list[FileSpec], download_allowed: bool
) -> str:
    missing_names = ", ".join(f.relpath for f in missing)
    lines = [f"{spec.title} ({spec.name}): missing {missing_names} below the data root {root}."]
    by_source = _by_source(missing)
    for source, files in by_source.items():
        target = root / source.relpath
        size = f"{source.nbytes:,} bytes, " if source.nbytes else ""
        if source.kind == "zip-extract":
            lines.append(
                f"- Download {source.url} ({size}sha256 {source.sha256}) and save it as {target}: it is "
                f"verified and extracted there; or put the extracted file(s) "
                f"{', '.join(f.filename for f in files)} into {target.parent}."
            )
        else:
            lines.append(f"- Download {source.url} ({size}sha256 {source.sha256}) and save it as {target}.")
    if not download_allowed:
        lines.append(f"Or call ensure_files({spec.name!r}, ..., download=True) to do this automatically "
                     "(on the command line: leave out --no-download).")
    lines.append("Use another data folder with data_dir= or $MAMO_LITE_DATA. "
                 f"Terms: {spec.terms}; cite {spec.citation}.")
    return "\n".join(lines)


def _fetch(root: Path, spec: DatasetSpec, missing: list[FileSpec], *, download_allowed: bool, verify: bool,
           progress: bool | None, timeout: float, explicit_root: bool) -> None:
    """Obtain the ``missing`` files: from archives already present, else by download (if allowed).

    ``explicit_root``: the data root was chosen (``data_dir`` or ``$MAMO_LITE_DATA``), so a root that
    does not exist is probably a typo and the errors say so.
    """
    by_source = _by_source(missing)
    note = _absent_root_note(root, explicit_root)

    def available(source: Source) -> bool:
        if source.kind == "zip-inplace":
            return False  # _locate already looked inside it
        local = source.kind == "zip-extract" and (root / source.relpath).is_file()
        return local or (download_allowed and source.url is not None)

    if not all(available(s) for s in by_source):
        if any(s.kind == "zip-inplace" for s in by_source):
            raise MissingDataError(_bx_missing_message(root, spec, missing) + note)
        raise MissingDataError(_ml_missing_message(root, spec, missing, download_allowed) + note)

    for source, files in by_source.items():
        target = root / source.relpath
        if not (source.kind == "zip-extract" and target.is_file()):
            assert source.url is not None and source.sha256 is not None  # checked by available()
            try:
                download(source.url, target, sha256=source.sha256, nbytes=source.nbytes, md5=source.md5,
                         timeout=timeout, progress=progress)
            except DownloadError as err:
                if not note:
                    raise
                raise DownloadError(f"{err}{note}") from err
        elif verify and source.sha256 and (got := sha256_file(target)) != source.sha256:
            raise ChecksumError(
                f"Checksum mismatch for {target}: expected sha256 {source.sha256} ({source.nbytes:,} bytes); "
                f"got sha256 {got} ({target.stat().st_size:,} bytes). Delete it and load the dataset again "
                f"(from Python or the mamo-lite command line) to download {source.url}. "
                f"{_use_unverified(spec.name)}"
            )
        if source.kind == "zip-extract":
            with zipfile.ZipFile(target) as zf:
                present = set(zf.namelist())
            members = [f.member for f in files if f.member]
            # Documentation files (README...): optional, extracted when absent.
            members += [m for m in source.extras if m in present
                        and not (target.parent / m.removeprefix(source.strip_prefix)).exists()]
            extract_zip(target, target.parent, members, strip_prefix=source.strip_prefix)


def ensure_files(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> RawFiles:
    """Locate, verify and if needed download the raw files of dataset ``name``.

    Present files are verified first (sha256 of the decompressed content, or the git blob id for
    the complete ML-1M ratings; digests memoised, see :mod:`mamo_lite.data.download`). Missing files
    are then taken from an archive already in place (e.g. a hand-downloaded ``ml-1m.zip``) or
    downloaded, if ``download`` and the dataset has a URL (MovieLens only); downloads are always
    verified. Files already present are never overwritten.

    Args:
        name: a key of :data:`REGISTRY`: ``movielens-1m``, ``movielens-100k`` or ``book-crossing``.
        data_dir: data root; default ``$MAMO_LITE_DATA``, then :func:`cache_dir` (see :func:`data_root`).
        download: fetch missing files from the internet; if ``False`` a missing file raises.
        verify: check checksums of present files; ``False`` skips that and gives release ``unverified``.
        progress: progress bars for downloads; ``None`` shows them only when stderr is a terminal.
        timeout: network timeout in seconds, per connection attempt and read.

    Raises:
        MissingDataError: files absent and not obtainable (Book-Crossing, or ``download=False``);
            the message says what to put where.
        ChecksumError: a file does not match any accepted version, or a ``.gz`` file or zip member
            is corrupt.
        DownloadError: the download failed (the folders created for it are removed again).
    """
    spec = _spec(name)
    root = data_root(data_dir)
    explicit_root = bool(str(data_dir or "").strip() or os.environ.get("MAMO_LITE_DATA", "").strip())
    paths: dict[str, Path] = {}
    matched: dict[str, tuple[Identity, Digests]] = {}
    missing: list[FileSpec] = []
    for f in spec.files:
        path = _locate(root, f)
        if path is None:
            missing.append(f)
            continue
        paths[f.logical] = path
        if verify:
            matched[f.logical] = _verify(name, f, path)
    if missing:
        _fetch(root, spec, missing, download_allowed=download, verify=verify, progress=progress,
               timeout=timeout, explicit_root=explicit_root)
        for f in missing:
            path = _locate(root, f)
            if path is None:  # pragma: no cover - extraction guarantees it
                raise MissingDataError(
                    f"{root / f.relpath} is still missing after fetching it; report this bug."
                )
            paths[f.logical] = path
            if verify:
                matched[f.logical] = _verify(name, f, path)
    release: Release
    if not verify:
        release = "unverified"
    else:
        release = "subset" if any(i.release == "subset" for i, _ in matched.values()) else "complete"
    return RawFiles(
        name=name,
        root=root,
        paths={f.logical: paths[f.logical] for f in spec.files},
        sha256={k: d.sha256 for k, (_, d) in matched.items()},
        release=release,
        nbytes={k: d.nbytes for k, (_, d) in matched.items()},
    )
