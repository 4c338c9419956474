"""Parsers on tiny hand-written fixtures (tests/fixtures): hand-checked tables, and every kind of bad input.

The fixtures mimic each format's quirks (ML-1M's duplicate movie 860, latin-1 titles and a UTF-8,
CRLF extrainfos file; ML-100K's genre flags; Book-Crossing's quoting, ``\\"`` escapes, a location
with a line break, NULL ages, implicit ratings and unknown ISBNs) with invented content.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mamo_lite.data.errors import DataError
from mamo_lite.data.parsers import (
    ParseError,
    ml1m_age_group,
    parse_book_crossing,
    parse_movielens_1m,
    parse_movielens_100k,
)

FIXTURES = Path(__file__).parent / "fixtures"
ML1M_FILES = {"ratings": "ml-1m/ratings.dat", "users": "ml-1m/users.dat", "movies": "ml-1m/movies.dat",
              "extrainfos": "ml-1m-extra/movies_extrainfos.dat"}
ML100K_FILES = {k: f"ml-100k/u.{k}" for k in ("data", "user", "item", "genre", "occupation")}
BX_FILES = {"ratings": "book-crossing/BX-Book-Ratings.csv", "books": "book-crossing/BX-Books.csv",
            "users": "book-crossing/BX-Users.csv"}


# The Book-Crossing fixture rates ISBN 0000000002 twice for user 10 (an implicit 0, then an 8): the
# parser keeps the later row and warns; test_bad_inputs_data checks that warning.
pytestmark = pytest.mark.filterwarnings("ignore:.*BX-Book-Ratings.*duplicate rating:UserWarning")


def paths(files: dict[str, str], root: Path = FIXTURES) -> dict[str, Path]:
    return {k: root / v for k, v in files.items()}


def copy_fixtures(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    return root


def edit(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert old in data, f"fixture edit: {old!r} not in {path.name}"
    path.write_bytes(data.replace(old, new, 1))


# ----------------------------------------------------------------------------------- ML-1M tables

def test_ml1m_tables():
    raw = parse_movielens_1m(paths(ML1M_FILES))
    assert raw.name == "movielens-1m" and raw.time_based and (raw.rating_min, raw.rating_max) == (1.0, 5.0)
    assert raw.user_fields == ["gender", "age", "occupation"]
    assert raw.item_categorical == ["rate", "year"] and raw.item_multi == ["genre", "director"]
    # users: zip dropped, raw values kept
    assert list(raw.users.columns) == ["user", "gender", "age", "occupation"]
    assert raw.users.set_index("user").loc[2].tolist() == ["M", 56, 16]
    # items come from extrainfos (860 has none); N/A → missing / empty tuple
    items = raw.items.set_index("item")
    assert list(items.index) == [1, 2, 3, 4, 811]
    assert items.loc[1, "rate"] == "G" and items.loc[1, "year"] == 1995
    assert pd.isna(items.loc[3, "rate"]) and pd.isna(items.loc[3, "year"])
    assert items.loc[1, "genre"] == ("Animation", "Comedy") and items.loc[3, "genre"] == ()
    # directors: text in parentheses stripped, as MAMO does
    assert items.loc[2, "director"] == ("Bob Director", "Cid Helper")
    assert items.loc[811, "director"] == ("Dee Director",)
    assert items.loc[4, "title"] == "Café Movie (1996)"  # latin-1 movies.dat
    # ratings: all 25 lines, 860 merged into 811, order = Unix time
    assert len(raw.ratings) == 25 and list(raw.ratings.columns) == ["user", "item", "rating", "order"]
    assert 860 not in set(raw.ratings["item"])
    first = raw.ratings.iloc[0]
    assert (first["user"], first["item"], first["rating"], first["order"]) == (1, 3, 4.0, 975790000)
    assert raw.files["ratings"]["records"] == 25 and raw.files["movies"]["records"] == 6
    assert raw.files["extrainfos"]["records"] == 5 and raw.files["users"]["bytes"] == 117
    assert any("1 ratings of movies 860/1795 mapped" in n for n in raw.notes)


def test_ml1m_duplicate_movies_dropped_when_not_merged():
    raw = parse_movielens_1m(paths(ML1M_FILES), merge_duplicate_movies=False)
    assert len(raw.ratings) == 24
    assert not raw.ratings["item"].isin([860]).any()
    assert any("merge_duplicate_movies=False: 1 ratings of movies 860/1795 dropped" in n for n in raw.notes)


def test_ml1m_crlf_and_gzip_read_alike(tmp_path):
    root = copy_fixtures(tmp_path)
    for rel in ("ml-1m/ratings.dat", "ml-1m/users.dat"):
        p = root / rel
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    p = root / "ml-1m/movies.dat"
    (root / "ml-1m/movies.dat.gz").write_bytes(gzip.compress(p.read_bytes()))
    p.unlink()
    files = {**paths(ML1M_FILES, root), "movies": root / "ml-1m/movies.dat.gz"}
    a, b = parse_movielens_1m(files), parse_movielens_1m(paths(ML1M_FILES))
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    pd.testing.assert_frame_equal(a.items, b.items)


# --------------------------------------------------------------------------------- ML-100K tables

def test_ml1m_age_groups():
    assert ml1m_age_group([1, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73]).tolist() == [
        1, 1, 18, 18, 25, 25, 35, 35, 45, 45, 50, 50, 56, 56]


def test_ml100k_tables():
    # the fixture has 3 items and 4 ratings per user: each user rates one item twice, kept on request
    raw = parse_movielens_100k(paths(ML100K_FILES), duplicate_ratings="keep")
    assert raw.user_fields == ["gender", "age", "occupation"]
    assert raw.item_categorical == ["year"] and raw.item_multi == ["genre"]
    assert raw.users["age"].tolist() == [18, 50, 1, 56]  # 24, 53, 17, 56 years
    assert raw.users["occupation"].tolist() == ["technician", "other", "student", "retired"]
    items = raw.items.set_index("item")
    assert items.loc[1, "genre"] == ("Animation", "Children's", "Comedy")
    assert items.loc[2, "genre"] == ("Action", "Thriller") and items.loc[2, "title"] == "Café Deux (1996)"
    assert items.loc[3, "genre"] == ()  # only the "unknown" flag
    assert items["year"].tolist()[:2] == [1995, 1996] and pd.isna(items.loc[3, "year"])
    assert len(raw.ratings) == 15 and raw.ratings["order"].iloc[0] == 880000000
    assert raw.notes == [(f"{paths(ML100K_FILES)['data']}: 3 duplicate ratings of the same user and item "
                          "(3 pairs, e.g. user 1, item 2) kept (duplicate_ratings='keep')")]
    with pytest.warns(UserWarning, match="3 duplicate ratings"):  # by default, the last of each is kept
        assert len(parse_movielens_100k(paths(ML100K_FILES)).ratings) == 12


# --------------------------------------------------------------------------- Book-Crossing tables

def test_book_crossing_tables():
    raw = parse_book_crossing(paths(BX_FILES))
    assert not raw.time_based and (raw.rating_min, raw.rating_max) == (1.0, 10.0)
    assert raw.user_fields == ["age", "country"] and raw.item_categorical == ["year", "author", "publisher"]
    # users: NULL age (11), age 4 (12), age 111 (13) and no country (15) dropped; 5 and 110 kept
    users = raw.users.set_index("user")
    assert list(users.index) == [10, 14, 16, 17, 18]
    assert users["country"].tolist() == ["usa", "italy", "canada", "australia", "spain"]
    assert users["age"].tolist() == [30, 45, 5, 110, 29]
    # books: item id = row in BX-Books.csv; years 0, 2030, 1376 unknown; &amp; unescaped; \" read as "
    books = raw.items.set_index("item")
    assert books["isbn"].tolist() == ["0000000001", "0000000002", "0000000003", "0000000004", "000000000X"]
    assert books.loc[1, "title"] == 'A Title "Quoted"' and books.loc[1, "publisher"] == "Pub & Sons"
    assert books.loc[3, "title"] == "Troisième"
    assert [None if pd.isna(y) else int(y) for y in books["year"]] == [2001, None, None, 1999, None]
    # ratings: 26 rows; 2 implicit, 2 by users without a usable profile (11, 99), 1 unknown ISBN
    r = raw.ratings
    assert len(r) == 21 and r["rating"].between(1, 10).all()
    assert r["order"].tolist()[:4] == [0, 3, 4, 6]  # file row positions
    assert r.loc[r["user"] == 14, "item"].tolist() == [1, 2, 3, 5, 4]
    assert raw.files["ratings"]["records"] == 26 and raw.files["users"]["records"] == 9
    note = next(n for n in raw.notes if n.startswith("BX-Book-Ratings"))
    assert "26 ratings, 24 explicit" in note and "2 implicit 0s dropped" in note
    assert "2 by users without a usable profile" in note and "1 of ISBNs missing" in note
    assert note.endswith("21 kept")


def test_book_crossing_year_and_age_ranges_are_options():
    raw = parse_book_crossing(paths(BX_FILES), year_range=(1000, 2100), age_range=(18, 100))
    assert raw.items["year"].tolist()[2] == 2030 and raw.items["year"].tolist()[4] == 1376
    assert raw.users["user"].tolist() == [10, 14, 18]


def test_book_crossing_gzip(tmp_path):
    root = copy_fixtures(tmp_path)
    files = {}
    for k, rel in BX_FILES.items():
        gz = root / (rel + ".gz")
        gz.write_bytes(gzip.compress((root / rel).read_bytes()))
        files[k] = gz
    plain = parse_book_crossing(paths(BX_FILES))
    pd.testing.assert_frame_equal(parse_book_crossing(files).ratings, plain.ratings)


# ------------------------------------------------------------------------------------ bad input

def raises_parse(fn, files, *needles, **kwargs) -> ParseError:
    with pytest.raises(ParseError) as info:
        fn(files, **kwargs)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert isinstance(info.value, DataError)
    return info.value


@pytest.mark.parametrize(("old", "new", "line", "field", "needles"), [
    (b"2::4::5::975801700", b"2::4::5", 7, None, ["expected 4 '::'-separated fields", "found 3"]),
    (b"2::4::5::975801700", b"2::4::5::975801700::9", 7, None, ["expected 4", "found 5"]),
    (b"3::2::2::975801599", b"3::2::four::975801599", 10, "rating", ["'four' is not an integer"]),
    (b"3::2::2::975801599", b"3::2::4.5::975801599", 10, "rating", ["'4.5' is not an integer"]),
    (b"3::2::2::975801599", b"3::2::6::975801599", 10, "rating", ["rating 6 is outside the scale 1", "5"]),
    (b"3::2::2::975801599", b"3::2::0::975801599", 10, "rating", ["outside the scale"]),
    (b"5::3::2::975900100", b"5::3::2::", 18, "timestamp", ["'' is not an integer"]),
    (b"6::3::5::975000200", b"42::3::5::975000200", 24, "user", ["user 42 does not appear in users.dat"]),
    (b"6::3::5::975000200", b"6::999::5::975000200", 24, "item", ["item 999 does not appear in movies.dat"]),
    (b"6::3::5::975000200\n", b"\n6::3::5::975000200\n", 24, None, ["found 1 (empty line)"]),
])
def test_ml1m_corrupt_ratings(tmp_path, old, new, line, field, needles):
    root = copy_fixtures(tmp_path)
    edit(root / "ml-1m/ratings.dat", old, new)
    err = raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), "ratings.dat", f"line {line}", *needles)
    assert err.line == line and err.field == field and err.file.endswith("ratings.dat")
    assert "Fix:" in str(err)


@pytest.mark.parametrize(("sep", "name"), [(b"\t", "tab"), (b",", "','"), (b"|", "'|'")])
def test_ml1m_wrong_separator(tmp_path, sep, name):
    root = copy_fixtures(tmp_path)
    p = root / "ml-1m/ratings.dat"
    p.write_bytes(p.read_bytes().replace(b"::", sep))
    raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), "ratings.dat", "line 1",
                 "expected '::'-separated fields", f"looks {name}-separated")


def test_ml100k_wrong_separator(tmp_path):
    root = copy_fixtures(tmp_path)
    p = root / "ml-100k/u.data"
    p.write_bytes(p.read_bytes().replace(b"\t", b"::"))
    raises_parse(parse_movielens_100k, paths(ML100K_FILES, root), "u.data", "line 1",
                 "expected tab-separated fields", "looks '::'-separated")


def test_wrong_encoding_names_line_and_encoding(tmp_path):
    root = copy_fixtures(tmp_path)
    p = root / "ml-1m-extra/movies_extrainfos.dat"
    p.write_bytes(p.read_bytes().decode("utf-8").encode("latin-1"))  # é → one latin-1 byte
    err = raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), "movies_extrainfos.dat", "line 4",
                       "byte 0xe9 is not valid utf-8", "must be utf-8-encoded")
    assert err.line == 4


def test_utf16_file_is_rejected(tmp_path):
    root = copy_fixtures(tmp_path)
    p = root / "ml-1m/users.dat"
    p.write_bytes(p.read_bytes().decode("latin-1").encode("utf-16"))
    raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), "users.dat", "line 1", "NUL byte",
                 "expected latin-1")


def test_non_ascii_in_ratings(tmp_path):
    root = copy_fixtures(tmp_path)
    edit(root / "ml-1m/ratings.dat", b"4::1::5", "4::1::é".encode())
    raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), "ratings.dat", "line 14", "not valid ascii")


@pytest.mark.parametrize(("rel", "old", "new", "needles"), [
    ("ml-1m/users.dat", b"2::M::56", b"2::X::56", ["line 2", "field 'gender'", "'X' is not M or F"]),
    ("ml-1m/users.dat", b"2::M::56", b"2::M::57", ["line 2", "field 'age'", "age code 57"]),
    ("ml-1m/users.dat", b"3::M::25::15", b"3::M::25::21", ["line 3", "field 'occupation'", "outside 0"]),
    ("ml-1m/users.dat", b"3::M::25", b"2::M::25", ["line 3", "field 'user'", "duplicate id 2"]),
    ("ml-1m/movies.dat", b"3::Movie Three (1995)::Comedy|Romance", b"3::Movie Three (1995)",
     ["movies.dat", "line 3", "expected 3 '::'-separated fields"]),
    ("ml-1m-extra/movies_extrainfos.dat", b"::1996::R::", b"::96::R::",
     ["movies_extrainfos.dat", "line 4", "field 'year'", "'96' is neither"]),
    ("ml-1m-extra/movies_extrainfos.dat", b"::Ein Film.::N/A", b"::Ein Film.",
     ["line 5", "expected 11 '::'-separated fields"]),
])
def test_ml1m_corrupt_profiles(tmp_path, rel, old, new, needles):
    root = copy_fixtures(tmp_path)
    edit(root / rel, old, new)
    raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), Path(rel).name, *needles)


@pytest.mark.parametrize(("rel", "old", "new", "needles"), [
    ("ml-100k/u.user", b"|student|", b"|pilot|",
     ["u.user", "line 3", "'pilot' is not listed in u.occupation"]),
    ("ml-100k/u.item", b"|15-Mar-1996|", b"|1996-03-15|", ["u.item", "line 2", "field 'release_date'"]),
    ("ml-100k/u.item", b"http://example.org/1|0", b"http://example.org/1|2",
     ["u.item", "line 1", "field 'unknown'", "genre flag 2"]),
    ("ml-100k/u.item", b"http://example.org/1|0|", b"http://example.org/1|",
     ["u.item", "line 1", "expected 24 '|'-separated fields", "found 23"]),
    ("ml-100k/u.data", b"3\t3\t5\t890000000", b"3\t3\t9\t890000000", ["u.data", "line 9", "rating 9"]),
    ("ml-100k/u.data", b"3\t3\t5", b"3\t7\t5", ["u.data", "line 9", "item 7 does not appear in u.item"]),
    ("ml-100k/u.genre", b"Action|1", b"Action|7", ["u.genre", "line 2", "out of order"]),
])
def test_ml100k_corrupt(tmp_path, rel, old, new, needles):
    root = copy_fixtures(tmp_path)
    edit(root / rel, old, new)
    raises_parse(parse_movielens_100k, paths(ML100K_FILES, root), *needles)


@pytest.mark.parametrize(("rel", "old", "new", "needles"), [
    ("book-crossing/BX-Book-Ratings.csv", b'"16";"0000000002";"2"', b'"16";"0000000002"',
     ["BX-Book-Ratings.csv", "line 13", "expected 3 ';'-separated fields", "found 2"]),
    ("book-crossing/BX-Book-Ratings.csv", b'"16";"0000000002";"2"', b'"16";"0000000002";"11"',
     ["line 13", "field 'Book-Rating'", "rating 11 is outside the scale 0"]),
    ("book-crossing/BX-Book-Ratings.csv", b'"16";"0000000002";"2"', b'"16";"0000000002";"two"',
     ["line 13", "field 'Book-Rating'", "'two' is not an integer"]),
    ("book-crossing/BX-Book-Ratings.csv", b'"16";"0000000002"', b'"sixteen";"0000000002"',
     ["line 13", "field 'User-ID'", "'sixteen' is not an integer"]),
    # the user after the location with a line break: record 6, physical line 8
    ("book-crossing/BX-Users.csv", b'"41"', b'"forty"', ["BX-Users.csv", "line 8", "field 'Age'"]),
    ("book-crossing/BX-Users.csv", b'"User-ID";"Location";"Age"', b'"User-ID";"Location";"Years"',
     ["BX-Users.csv", "line 1", "missing column(s) ['Age']", "found ['User-ID', 'Location', 'Years']"]),
    ("book-crossing/BX-Books.csv", b'"ISBN";', b'"Isbn";',
     ["BX-Books.csv", "line 1", "missing column(s) ['ISBN']"]),
    ("book-crossing/BX-Book-Ratings.csv", b'"14";"0000000004";"1"', b'"14";"0000000004";"1',
     ["BX-Book-Ratings.csv", "line 27", "malformed CSV"]),
])
def test_book_crossing_corrupt(tmp_path, rel, old, new, needles):
    root = copy_fixtures(tmp_path)
    edit(root / rel, old, new)
    raises_parse(parse_book_crossing, paths(BX_FILES, root), *needles)


def test_book_crossing_wrong_separator(tmp_path):
    root = copy_fixtures(tmp_path)
    p = root / BX_FILES["ratings"]
    p.write_bytes(p.read_bytes().replace(b";", b","))
    raises_parse(parse_book_crossing, paths(BX_FILES, root), "BX-Book-Ratings.csv", "line 1",
                 "expected ';'-separated fields", "looks ','-separated")


def test_truncated_gzip(tmp_path):
    root = copy_fixtures(tmp_path)
    data = gzip.compress((root / BX_FILES["ratings"]).read_bytes() * 50)
    gz = root / "BX-Book-Ratings.csv.gz"
    gz.write_bytes(data[: len(data) // 2])
    raises_parse(parse_book_crossing, {**paths(BX_FILES, root), "ratings": gz}, "BX-Book-Ratings.csv.gz",
                 "corrupt compressed file", "download the official release again")


@pytest.mark.parametrize("rel", ["ml-1m/users.dat", "ml-1m/ratings.dat"])
def test_empty_and_missing_files(tmp_path, rel):
    root = copy_fixtures(tmp_path)
    (root / rel).write_bytes(b"")
    raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), Path(rel).name, "file is empty")
    (root / rel).unlink()
    raises_parse(parse_movielens_1m, paths(ML1M_FILES, root), Path(rel).name, "file not found")


def test_missing_logical_file():
    files = paths(ML1M_FILES)
    del files["extrainfos"]
    raises_parse(parse_movielens_1m, files, "no path given for ['extrainfos']")
