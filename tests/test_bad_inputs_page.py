"""``book/bad-inputs.md`` lists exactly the bad inputs the tests prove (``tests/bad_inputs_page.py``)."""

from __future__ import annotations

import ast

import pytest
from bad_inputs_page import PAGE, Row, _mark_kwargs, collect, render, table


def test_the_page_matches_the_tests():
    rows = collect()
    assert rows, "no test carries a bad_input mark"
    current = PAGE.read_text(encoding="utf-8")
    assert render(current, rows) == current, "book/bad-inputs.md is stale: run python tests/bad_inputs_page.py --write"


def test_every_row_names_a_distinct_test_with_both_texts():
    rows = collect()
    assert len({r.test for r in rows}) == len(rows)
    assert all(r.case and r.handling for r in rows)


def test_marks_are_read_from_keywords_or_positions_and_must_be_literals():
    kw = ast.parse('pytest.mark.bad_input(case="a  b", handling="c")', mode="eval").body
    pos = ast.parse('pytest.mark.bad_input("a", "c")', mode="eval").body
    assert _mark_kwargs(kw) == {"case": "a b", "handling": "c"} and _mark_kwargs(pos) == {"case": "a", "handling": "c"}
    alias = ast.parse('bad_input(case="a", handling="c")', mode="eval").body
    assert _mark_kwargs(alias) == {"case": "a", "handling": "c"}
    assert _mark_kwargs(ast.parse("pytest.mark.slow", mode="eval").body) is None
    with pytest.raises(TypeError, match="literal"):
        _mark_kwargs(ast.parse("pytest.mark.bad_input(case=x, handling='c')", mode="eval").body)
    assert "a \\| b" in table([Row("a | b", "c", "t.py::f")])
