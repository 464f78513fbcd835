"""MkDocs hook: the docstrings' Sphinx roles (``:func:`receiver```) read as plain code in the site.

mkdocstrings renders the docstrings as Markdown, where a role stays as text before its code span
(``:func:<code>receiver</code>``); this drops the role and keeps the code."""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:py:)?(?:func|class|data|meth|exc|attr|mod|obj|const):(<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    return ROLE.sub(r"\1", html)
