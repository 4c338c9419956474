"""The built book, opened page by page in headless Chromium as a reader would see it.

``bash .ci/book`` builds ``_build/html``; this test serves it on 127.0.0.1 and opens every page in
Debian's Chromium (``/usr/bin/chromium``, which ``.ci/run`` installs) through Playwright for Python.
The checks are in ``tests/browser_checks.py``: no error output, every image loaded, MathJax typeset,
no broken internal link or anchor, no console error, launch buttons on every chapter, nothing wider
than the text column outside a scroll container, every figure shown at ≥ 90 % of its natural width.
A full-page screenshot of each page goes to ``_build/screenshots/``.

Without Chromium, Playwright or a built book the tests skip with one line; under ``CI=true`` they
fail instead (``.ci/run`` builds the book before it runs this file).

``test_each_check_catches_its_defect`` builds a small site with one deliberately broken page per
check and proves that each check reports its defect, and that a clean page passes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_checks as bc

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _missing() -> str | None:
    if not bc.CHROMIUM.exists():
        return f"{bc.CHROMIUM} is absent (apt-get install chromium; .ci/run does)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (it is pinned in environment.yml)"
    return None


def _require(built: bool = False) -> None:
    why = _missing()
    if why is None and built and not (HTML / "book" / "intro.html").is_file():
        why = f"no built book in {HTML.relative_to(ROOT)} (run bash .ci/book first)"
    if why is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {why}: CI must check the rendered book in a browser")
    pytest.skip(why)


def test_every_page_of_the_book_reads_well_in_a_browser() -> None:
    _require(built=True)
    pages = bc.html_pages(HTML)
    chapters = [p for p in pages if p.startswith("notebooks/")]
    assert len(chapters) >= 4, f"expected every chapter among the built pages, got {pages}"
    problems = bc.check_site(HTML, SCREENSHOTS)
    assert not problems, f"{len(problems)} problems on {len(pages)} pages:\n" + "\n".join(map(str, problems))
    shots = sorted(SCREENSHOTS.rglob("*.png"))
    assert len(shots) >= len(pages) - 1, "a screenshot per page (index.html only redirects)"


# -- the checks fail on broken pages ---------------------------------------------------------------

_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>t</title>
<style>body {{ margin: 0 }} article.bd-article {{ width: 600px; margin: 0 40px }}
.scroll {{ overflow-x: auto }} .clip {{ overflow: hidden }}</style>{head}</head>
<body><article class="bd-article">{body}</article></body></html>"""
_LAUNCH = '<a href="https://colab.research.google.com/github/o/r/blob/main/notebooks/x.ipynb">Colab</a>'


def _png(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    raw = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


BROKEN = {
    # page: (check expected to fire, body, extra head)
    "error-output": (('<div class="cell_output"><div class="output traceback">'
                      "Traceback (most recent call last):\nValueError: boom</div></div>"), ""),
    "image": ('<img src="../_images/missing.png" alt="gone">', ""),
    "math": ("<p>Raw TeX: $a_u = \\operatorname{softmax}(x)$ was never typeset.</p>", ""),
    "link": ('<p><a href="other.html">missing page</a> <a href="#nowhere">missing anchor</a></p>', ""),
    "console": ("<p>script error</p>", "<script>undefinedFunction();</script>"),
    "launch": ("<p>a chapter without launch buttons</p>", ""),
    "overflow": (('<div class="clip"><table style="width:900px"><tr><td>wide</td></tr></table></div>'
                  '<div><pre style="width:900px; white-space:pre">a wide, unscrolled output</pre></div>'), ""),
    "figure": ('<img src="../_images/wide.png" style="max-width:100%">', ""),
}
CLEAN = ('<h1 id="top">Clean</h1><p>A link <a href="#top">up</a>, a figure <img src="../_images/narrow.png">, '
         '<div class="scroll"><table style="width:900px"><tr><td>wide but scrolled</td></tr></table></div>')


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("broken-site")
    (site / "_images").mkdir()
    _png(site / "_images" / "wide.png", 800, 60)  # drawn wider than the 600-px column: shown at 75 %
    _png(site / "_images" / "narrow.png", 500, 60)
    (site / "notebooks").mkdir()
    for name, (body, head) in BROKEN.items():
        launch = "" if name == "launch" else _LAUNCH
        (site / "notebooks" / f"{name}.html").write_text(_HEAD.format(head=head, body=launch + body))
    (site / "notebooks" / "clean.html").write_text(_HEAD.format(head="", body=_LAUNCH + CLEAN))
    return site


def test_each_check_catches_its_defect(broken_site: Path) -> None:
    _require()
    problems = bc.check_site(broken_site, broken_site / "shots")
    by_page: dict[str, set[str]] = {}
    for p in problems:
        by_page.setdefault(p.page.removeprefix("notebooks/").removesuffix(".html"), set()).add(p.check)
    report = "\n".join(map(str, problems))
    assert "clean" not in by_page, f"the clean page must pass:\n{report}"
    for check in bc.CHECKS:
        assert check in by_page.get(check, set()), f"the {check!r} check missed its broken page:\n{report}"
    details = {(p.page, p.check): p.detail for p in problems}
    assert "no id 'nowhere'" in report and "other.html does not exist" in report
    assert "75%" in details[("notebooks/figure.html", "figure")]
    assert sum(1 for p in problems if p.page == "notebooks/overflow.html") == 2  # clipped and unscrolled
    assert (broken_site / "shots" / "notebooks" / "clean.html.png").stat().st_size > 0
