"""Docs that must stay true as the code changes (no root)."""

from __future__ import annotations

from pathlib import Path

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
