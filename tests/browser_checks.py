"""Open every page of a built book in headless Chromium and list what a reader would see broken.

Used by ``tests/test_browser.py`` (on ``_build/html``, and on deliberately broken pages to prove each
check fires). Chromium is Debian's ``/usr/bin/chromium`` (``.ci/run`` installs it), driven by
Playwright for Python; Playwright's own browser download is never used (it needs the network).

Each check returns problems as ``(page, check, detail)`` tuples; :data:`CHECKS` names them:

``error-output``
    a code cell shows an error or a traceback (cells tagged ``raises-exception`` may);
``image``
    an ``<img>`` did not load (``naturalWidth == 0``);
``math``
    raw TeX is visible: a math element MathJax did not typeset, a ``$…$``, ``\\(`` or ``\\[`` in the
    text, or a MathJax error box;
``link``
    an internal link points to a missing file or to an anchor (``#id``) the target page lacks;
``console``
    the page logged a console error or threw an uncaught exception;
``launch``
    a chapter (a page built from ``notebooks/*.ipynb``) has no Colab launch button;
``overflow``
    an element sticks out of the text column and is not inside a horizontal scroll container;
``figure``
    a figure is shown at less than :data:`MIN_FIGURE_SCALE` of its natural width (it was drawn wider
    than the column, so its fonts shrink).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}
"""The reader's window: a laptop screen. The text column is then 688 CSS px wide (``plots.COLUMN_PX``)."""
MIN_FIGURE_SCALE = 0.9
CHECKS = ("error-output", "image", "math", "link", "console", "launch", "overflow", "figure")
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}


@dataclass(frozen=True)
class Problem:
    page: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: [{self.check}] {self.detail}"


def html_pages(root: Path) -> list[str]:
    """Every HTML page under ``root`` (relative POSIX paths), Sphinx's asset folders left out."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.html")
        if not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS)
    )


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (a free port) in a thread; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


# One pass over the rendered page, in the browser. Returns plain data for Python to judge.
_INSPECT = r"""
async () => {
  const out = {errors: [], images: [], math: [], links: [], ids: [], launch: [], overflow: [], figures: []};
  // Let MathJax finish typesetting (it is loaded asynchronously) and every image decode.
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) { out.math.push("MathJax failed: " + e); }
  }
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));

  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const col = article.getBoundingClientRect();
  const describe = el => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    if (el.className && typeof el.className === "string") s += "." + el.className.trim().split(/\s+/).slice(0, 3).join(".");
    const text = (el.innerText || el.getAttribute("src") || "").trim().replace(/\s+/g, " ").slice(0, 60);
    return text ? `${s} "${text}"` : s;
  };

  // error outputs: tracebacks and error cells, except in cells tagged raises-exception
  for (const el of document.querySelectorAll(".output.traceback, .output.error, .cell_output .error")) {
    if (!el.closest(".tag_raises-exception")) out.errors.push(describe(el));
  }
  for (const el of document.querySelectorAll(".cell_output")) {
    if (!el.closest(".tag_raises-exception") && /Traceback \(most recent call last\)|^\w+Error: /m.test(el.innerText))
      out.errors.push("traceback text: " + describe(el));
  }

  // images
  for (const img of imgs) {
    if (!(img.complete && img.naturalWidth > 0)) out.images.push(img.getAttribute("src"));
  }

  // math: untypeset math elements, MathJax errors, raw TeX delimiters in the visible text
  for (const el of document.querySelectorAll(".math")) {
    if (!el.querySelector("mjx-container") && el.tagName.toLowerCase() !== "mjx-container") out.math.push("untypeset: " + describe(el));
  }
  for (const el of document.querySelectorAll("mjx-merror, .MathJax_Error")) out.math.push("MathJax error: " + describe(el));
  const skip = "script, style, pre, code, textarea, mjx-container, .highlight, .math, kbd, tt";
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const raw = /\$[^\s$][^$]*\$|\\\(|\\\[|\\begin\{/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip)) continue;
    const m = node.textContent.match(raw);
    if (m) out.math.push(`raw TeX "${node.textContent.trim().slice(0, 80)}"`);
  }

  // links and anchors (judged in Python, once every page's ids are known)
  for (const a of document.querySelectorAll("a[href]")) out.links.push(a.getAttribute("href"));
  out.ids = Array.from(document.querySelectorAll("[id]"), el => el.id)
    .concat(Array.from(document.querySelectorAll("a[name]"), el => el.getAttribute("name")));

  // launch buttons
  out.launch = Array.from(document.querySelectorAll("a[href]"), a => a.href)
    .filter(h => h.includes("colab.research.google.com") || h.includes("mybinder.org"));

  // overflow: the outermost elements sticking out of the column, not inside a scroll container
  const scrolls = el => {
    for (let p = el.parentElement; p && p !== article.parentElement; p = p.parentElement) {
      const ox = getComputedStyle(p).overflowX;
      if ((ox === "auto" || ox === "scroll") && p.getBoundingClientRect().right <= col.right + 1) return true;
    }
    return false;
  };
  const reported = [];
  for (const el of article.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (reported.some(p => p.contains(el))) continue;
    const style = getComputedStyle(el);
    if (style.position === "fixed" || style.visibility === "hidden") continue;
    if (r.right > col.right + 1 || r.left < col.left - 1) {
      if (scrolls(el)) continue;
      reported.push(el);
      out.overflow.push(`${describe(el)}: ${Math.round(r.width)} px wide, spans ${Math.round(r.left - col.left)}..${Math.round(r.right - col.left)} px of a ${Math.round(col.width)} px column`);
    }
  }

  // figures: displayed width against natural width (CSS px; the PNGs are drawn at 1 px per CSS px)
  for (const img of article.querySelectorAll("img")) {
    if (!img.naturalWidth || img.naturalWidth < 100) continue;
    const shown = img.getBoundingClientRect().width;
    out.figures.push({src: img.getAttribute("src"), natural: img.naturalWidth, shown: shown});
  }
  return out;
}
"""


def _resolve(page: str, href: str) -> tuple[str, str] | None:
    """``(target path, anchor)`` of an internal link on ``page``; ``None`` for external links."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:")) or href == "#":
        return None
    path = unquote(parts.path)
    if not path:
        target = page
    else:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path))
        if path.endswith("/"):
            target += "/index.html"
    return target, unquote(parts.fragment)


def check_site(root: Path, screenshots: Path | None = None, *, chapters: str = "notebooks/",
               pages: list[str] | None = None) -> list[Problem]:
    """Every problem a reader would see on the pages of the built site ``root`` (all pages by default).

    ``chapters``: pages whose path starts with it must carry launch buttons. ``screenshots``: where a
    full-page PNG of each page is written (``<page path>.png``).
    """
    from playwright.sync_api import sync_playwright

    root = Path(root)
    pages = html_pages(root) if pages is None else pages
    problems: list[Problem] = []
    seen_ids: dict[str, set[str]] = {}
    links: dict[str, list[str]] = {}
    profile = tempfile.mkdtemp(prefix="mamo-lite-chromium-")
    try:
        with serve(root) as base, sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
                viewport=VIEWPORT, device_scale_factor=1,
            )
            try:
                for page_path in pages:
                    redirect = _redirect_target(root / page_path)
                    if redirect is not None:  # index.html: a meta-refresh to the root page; check its target
                        links[page_path] = [redirect]
                        continue
                    page = context.new_page()
                    messages: list[str] = []
                    page.on("console", lambda m, out=messages: out.append(_console_text(m)) if m.type == "error" else None)
                    page.on("pageerror", lambda e, out=messages: out.append(f"uncaught: {e}"))
                    page.goto(f"{base}/{page_path}", wait_until="load", timeout=60_000)
                    data = page.evaluate(_INSPECT)
                    page.wait_for_timeout(100)  # late console errors of scripts run on load
                    if screenshots is not None:
                        shot = screenshots / (page_path + ".png")
                        shot.parent.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(shot), full_page=True)
                    page.close()
                    add = functools.partial(lambda check, detail, p=page_path: problems.append(
                        Problem(p, check, detail)))
                    for d in data["errors"]:
                        add("error-output", d)
                    for d in data["images"]:
                        add("image", f"image did not load: {d}")
                    for d in data["math"]:
                        add("math", d)
                    for d in messages:
                        if not d.endswith("/favicon.ico)"):  # the browser's own guess, not a request of the page
                            add("console", d)
                    if page_path.startswith(chapters) and not any(
                            "colab.research.google.com" in h for h in data["launch"]):
                        add("launch", "no Colab launch button")
                    for d in data["overflow"]:
                        add("overflow", d)
                    for f in data["figures"]:
                        if f["shown"] < MIN_FIGURE_SCALE * f["natural"]:
                            add("figure", f"{f['src']} drawn {f['natural']} px wide, shown at {f['shown']:.0f} px "
                                          f"({f['shown'] / f['natural']:.0%})")
                    seen_ids[page_path] = set(data["ids"])
                    links[page_path] = data["links"]
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

    for page_path, hrefs in links.items():
        for href in dict.fromkeys(hrefs):
            resolved = _resolve(page_path, href)
            if resolved is None:
                continue
            target, anchor = resolved
            if not (root / target).is_file():
                problems.append(Problem(page_path, "link", f"{href!r}: {target} does not exist"))
            elif anchor and target.endswith(".html"):
                ids = seen_ids.get(target)
                if ids is None:
                    ids = set(_ids_in_file(root / target))
                if anchor not in ids:
                    problems.append(Problem(page_path, "link", f"{href!r}: no id {anchor!r} in {target}"))
    return problems


def _console_text(message) -> str:
    url = (message.location or {}).get("url", "")
    return f"{message.text} ({url})" if url and url not in message.text else message.text


def _redirect_target(path: Path) -> str | None:
    import re

    m = re.search(r"""http-equiv=["']refresh["'][^>]*url=([^"'>]+)""", path.read_text(encoding="utf-8"), re.IGNORECASE)
    return m.group(1).strip() if m else None


def _ids_in_file(path: Path) -> list[str]:
    import re

    return re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", path.read_text(encoding="utf-8", errors="replace"))
