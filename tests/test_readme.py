"""The README is the newcomer's page: short, the two set-up commands, CI's test command, and links into docs/ that
resolve (`make docs` checks the links between the pages under docs/; the README lies outside the site)."""

from __future__ import annotations

import re
from pathlib import Path

import markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The heading ids of a Markdown page, as mkdocs' `toc` extension makes them."""
    md = markdown.Markdown(extensions=["toc", "tables"])
    md.convert(page.read_text())

    def walk(tokens):
        for t in tokens:
            yield t["id"]
            yield from walk(t["children"])

    return set(walk(md.toc_tokens))


def test_readme_links_and_anchors_resolve():
    links = [link for link in LINK.findall(README.read_text()) if "://" not in link]
    assert any(link.startswith("docs/") for link in links), "the README points into docs/"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (README.parent / path).resolve()
        assert target.is_file(), f"README links to a missing file: {link}"
        if anchor:
            assert anchor in anchors(target), f"README links to a missing heading: {link}"


def test_readme_is_short_and_says_how_to_start_and_test():
    text = README.read_text()
    assert len(text.encode()) <= 15_000, "the README is the newcomer's page: at most 15 KB; the rest goes to docs/"
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "install"], ["make", "bench"]]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    tests = re.search(r"## Tests\n\n```bash\n(.*?)```", text, re.S).group(1)
    assert tests.splitlines()[0].split()[:2] == ["make", "test"] and "make test" in ci, "the README's test line is CI's"
    assert "make docs" in ci, "CI builds the docs with their link check"
