"""The README's links into the documentation site land on a page and a heading that exist (the
site's own links are checked by `mkdocs build --strict` in the test command)."""

from __future__ import annotations

import re
from pathlib import Path

from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parents[1]


def test_readme_links_into_the_docs_resolve():
    links = re.findall(r"\]\(docs/([^)#]+)(?:#([^)]+))?\)", (REPO / "README.md").read_text())
    assert len(links) > 10
    for page, anchor in links:
        if not page.endswith(".md"):  # a figure: it exists
            assert (REPO / "docs" / page).is_file(), f"README shows docs/{page}, no such file"
            continue
        text = (REPO / "docs" / page).read_text()
        if anchor:
            headings = {slugify(re.sub(r"[`*]", "", h), "-") for h in re.findall(r"(?m)^#+ (.+)$", text)}
            assert anchor in headings, f"README links to docs/{page}#{anchor}, no such heading"


def test_every_docs_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert page.name in nav, f"docs/{page.name} is not in mkdocs.yml's nav"
