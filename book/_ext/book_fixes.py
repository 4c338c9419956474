"""Two fixes for the book's build (a local Sphinx extension, listed in _config.yml).

**Each page script once.** sphinx-thebe 0.3.1 registers its configuration script (``const THEBE_JS_URL = ...``) on every
``env-before-read-docs`` event, and Jupyter Book's build emits that event twice, so every page declared
the constant twice and the browser logged ``Identifier 'THEBE_JS_URL' has already been declared``
(``tests/test_browser.py`` fails on any console error). This drops repeated ``<script>`` entries
(same file, same inline body, same attributes) before a page is written.

**Bars in docstrings are text.** The package's docstrings write set sizes and norms as ``|S|`` or
``|g_i|``; reStructuredText reads ``|name|`` as a substitution and the strict build fails on it
("Undefined substitution referenced"). No docstring means a substitution, so the API page escapes
the bars before autodoc parses a docstring.
"""

from __future__ import annotations

import re

_BARS = re.compile(r"(?<![\\|`])\|([^|\s`][^|\n`]*?)\|(?![|`])")  # |x|, not ||x|| or ``|x|``


def escape_bars(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = [_BARS.sub(r"\\|\1\\|", line) for line in lines]


def _key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    # An inline script has filename None or "" (depending on who added it): both mean "no file".
    return (str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    # Early: html-page-context stops at the first handler that returns a template name.
    app.connect("html-page-context", dedupe, priority=100)
    app.connect("autodoc-process-docstring", escape_bars)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
