"""Docs that must stay true as the code changes (no root)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tna.bpf.abi import REASONS

ROOT = Path(__file__).resolve().parent.parent  # the checkout (tna itself may be an installed wheel)


def test_every_reason_is_explained() -> None:
    doc = (ROOT / "docs" / "datapath.md").read_text()
    missing = [r for r in REASONS if f"`{r}`" not in doc]
    assert not missing, f"docs/datapath.md does not explain {missing}"


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "bash netns_labs/setup.sh demo" in readme and "bash netns_labs/setup.sh test" in readme
    assert "setup.sh test" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / "netns_labs" / "setup.sh").exists()


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation
    dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, mailto: - not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_links_resolve(page: str) -> None:
    """Every relative link and image of the docs names a file (and heading) that exists."""
    broken = broken_links(ROOT / page)
    assert not broken, f"{page}: {broken}"


def test_link_check_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A (`x/y.c`): z\n## A (`x/y.c`): z\n")
    (tmp_path / "b.md").write_text("[ok](a.md#a-xyc-z) [ok](a.md#a-xyc-z-1) [here](#b) [web](https://example.com)\n"
                                   "# B\n[gone](c.md) ![gone](c.png) [bad](a.md#nope)\n```\n[in code](d.md)\n```\n")
    assert broken_links(tmp_path / "b.md") == ["c.md: no such file", "c.png: no such file",
                                               "a.md#nope: no heading #nope in a.md"]


def test_operations_page_is_linked_and_checked() -> None:
    assert "](docs/operations.md)" in (ROOT / "README.md").read_text()
    page = (ROOT / "docs" / "operations.md").read_text()
    assert len(LINK.findall(page)) >= 10  # the link check above has something to check
    assert "#the-lease" in page and "the-lease" in anchors((ROOT / "docs" / "datapath.md").read_text())
