"""The documentation covers the code: every setting, system check and public name is documented in
docs/, every relative link in docs/ and the README resolves (anchors included), and the README's
quickstart runs when pasted into a new project. Each checker is also shown to find what it looks
for missing, so that none of these tests can pass vacuously."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

import outbox
from outbox.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# pymdownx.snippets: `--8<-- "FILE"` or `--8<-- "FILE:START:END"`, relative to the repository root.
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\d*)(?::(\d*))?)?"\s*$', re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def expand(text: str) -> str:
    """The page as MkDocs builds it: included files in place (a missing one is left out)."""

    def include(m: re.Match[str]) -> str:
        path = ROOT / m.group(1)
        if not path.exists():
            return ""
        lines = path.read_text().splitlines()
        start = int(m.group(2)) - 1 if m.group(2) else 0
        end = int(m.group(3)) if m.group(3) else len(lines)
        return "\n".join(lines[start:end])

    return SNIPPET.sub(include, text)


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if not fence:
            out.append(line)
    return "\n".join(out)


def page(name: str) -> str:
    return expand((DOCS / name).read_text())


def pages() -> dict[str, str]:
    return {p.name: page(p.name) for p in sorted(DOCS.glob("*.md"))}


def slug(heading: str) -> str:
    """Python-Markdown's toc slugify (what MkDocs uses), which GitHub's agrees with here."""
    text = re.sub(r"<[^>]+>", "", heading.replace("`", ""))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(text: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+?)\s*$", prose(text), re.MULTILINE)}


def broken_links(name: str, text: str, base: Path) -> list[str]:
    """Relative links in `text` (a file in `base`) whose file or anchor does not exist."""
    broken = []
    for m in LINK.finditer(prose(text)):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else base / name
        if not file.exists():
            broken.append(f"{name}: {target} (no such file)")
        elif anchor and file.suffix == ".md":
            found = text if not path else expand(file.read_text())
            if anchor not in anchors(found):
                broken.append(f"{name}: {target} (no such heading)")
    return broken


def undocumented_settings(text: str) -> list[str]:
    """Settings without a row `| `NAME` | `default` |` in the settings table, or whose row states
    another default."""
    missing = []
    for name, default in DEFAULTS.items():
        row = re.search(rf"^\| `{name}` \| `([^`]*)`", text, re.MULTILINE)
        shown = f'"{default}"' if isinstance(default, str) else repr(default)
        if row is None:
            missing.append(name)
        elif row.group(1) != shown:
            missing.append(f"{name} (default {shown}, documented {row.group(1)})")
    return missing


def undocumented_names(texts: dict[str, str]) -> list[str]:
    """Public names without their API-reference entry, or named in no page besides it."""
    missing = []
    reference = texts.get("api.md", "")
    others = "\n".join(t for n, t in texts.items() if n != "api.md")
    for name in outbox.__all__:
        if f"::: outbox.{name}\n" not in reference + "\n":
            missing.append(f"{name} (no `::: outbox.{name}` in api.md)")
        if not re.search(rf"`[^`\n]*\b{re.escape(name)}\b[^`\n]*`", others):
            missing.append(f"{name} (in no page besides api.md)")
    return missing


def check_ids() -> set[str]:
    ids = set()
    for path in (ROOT / "outbox").rglob("*.py"):
        ids |= set(re.findall(r"\boutbox\.[EW]\d{3}\b", path.read_text()))
    return ids


def test_every_setting_is_in_the_settings_table_with_its_default():
    assert undocumented_settings(page("settings.md")) == []


def test_a_setting_missing_from_the_table_or_with_a_stale_default_is_found():
    text = page("settings.md")
    without = re.sub(r"^\| `BATCH_SIZE` \|.*$", "", text, flags=re.MULTILINE)
    assert undocumented_settings(without) == ["BATCH_SIZE"]
    stale = text.replace("| `MAX_ATTEMPTS` | `8` |", "| `MAX_ATTEMPTS` | `5` |")
    assert undocumented_settings(stale) == ["MAX_ATTEMPTS (default 8, documented 5)"]


def test_every_system_check_is_in_the_settings_page():
    ids = check_ids()
    assert "outbox.E001" in ids
    assert sorted(i for i in ids if f"`{i}`" not in page("settings.md")) == []


def test_every_public_name_has_a_docstring_and_is_documented():
    assert [n for n in outbox.__all__ if not inspect.getdoc(getattr(outbox, n))] == []
    assert undocumented_names(pages()) == []


def test_a_public_name_missing_from_the_docs_is_found():
    texts = pages()
    texts["api.md"] = texts["api.md"].replace("::: outbox.UnknownReceiver\n", "")
    texts = {n: t.replace("UnknownReceiver", "Unknown") if n != "api.md" else t for n, t in texts.items()}
    assert undocumented_names(texts) == [
        "UnknownReceiver (no `::: outbox.UnknownReceiver` in api.md)",
        "UnknownReceiver (in no page besides api.md)",
    ]


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.MULTILINE))
    assert sorted(p.name for p in DOCS.glob("*.md") if p.name not in listed) == []


def test_every_relative_link_in_the_docs_and_the_readme_resolves():
    broken = [b for name, text in pages().items() for b in broken_links(name, text, DOCS)]
    broken += broken_links("README.md", README.read_text(), ROOT)
    assert broken == []


def test_a_broken_link_or_anchor_is_found():
    text = "See [a](nope.md), [b](async.md#no-such-heading), [c](#async) and ![d](dashboard.png).\n"
    assert broken_links("async.md", text, DOCS) == [
        "async.md: nope.md (no such file)",
        "async.md: async.md#no-such-heading (no such heading)",
        "async.md: #async (no such heading)",
    ]


def test_the_readme_sends_readers_to_every_page():
    readme = README.read_text()
    unlinked = [p.name for p in DOCS.glob("*.md") if f"(docs/{p.name}" not in readme]
    assert sorted(unlinked) == ["index.md"]


@pytest.mark.processes
def test_the_readme_quickstart_runs_pasted_into_a_new_project(tmp_path):
    section = README.read_text().split("## Quickstart", 1)[1]
    script = re.search(r"```sh\n(.*?)\n```", section, re.DOTALL).group(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The package as installed in this virtualenv, as `pip install` would give a new project.
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ann followed bob" in done.stdout
    assert "eve followed" not in done.stdout
