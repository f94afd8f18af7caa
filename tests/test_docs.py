"""The docs stay true: the config reference is the live parsers' (regenerated, compared byte for byte), and
every file the README and docs/ link to exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_config_reference_is_generated_from_the_live_parsers():
    from regenesis_pl.config_reference import DOC, render

    text = render()
    for key in ("`data.synthesis.hint_stages`", "`generation.engine.cpu_bind`", "`evaluation.patience`",
                "`model.lora_r`", "`trainer.devices`", "`arms.overrides`", "`synthesis.method`"):
        assert key in text, key
    assert DOC.read_text() == text, "docs/configs.md is stale: run python -m regenesis_pl.config_reference --write"


def _local_links(path: Path) -> list[str]:
    links = [target for target in LINK.findall(path.read_text()) if not re.match(r"[a-z]+://|#|mailto:", target)]
    return [target.split("#", 1)[0] for target in links]


def test_every_local_link_of_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    readme_links = _local_links(ROOT / "README.md")
    assert any(link.startswith("docs/") for link in readme_links), "the README must link its reference pages"
    broken = [f"{page.relative_to(ROOT)} -> {link}" for page in pages for link in _local_links(page)
              if link and not (page.parent / link).exists()]
    assert not broken, broken
    # every page in docs/ is reachable from the README
    linked = {(ROOT / link).resolve() for link in readme_links}
    assert not [p.name for p in pages[1:] if p.resolve() not in linked], "docs/ pages the README does not link"
