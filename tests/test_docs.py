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


def _defined(path: Path, name: str) -> bool:
    """Whether ``name`` ("f", "Class" or "Class.method") is defined at the top of ``path`` (read, not imported)."""
    import ast

    scope = ast.parse(path.read_text()).body
    for part in name.split("."):
        found = [n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part]
        if not found:
            return False
        scope = found[0].body
    return True


def test_the_round_walk_in_architecture_names_files_and_calls_that_exist():
    """docs/architecture.md follows one round through at most five files; every file and call it names (hop
    files and their calls, helper files and theirs) is still there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d \| `", line)]
    assert 1 <= len(rows) <= 5, rows
    checked = 0
    for row in rows:
        _, hop, file, call, _what, helpers, _ = (cell.strip() for cell in row.split("|"))
        pairs = [(file.strip("`"), [call.strip("`")])]
        for helper in helpers.split(";"):  # "`path.py`: `name`, `name`"
            path, _, names = helper.partition(":")
            pairs.append((path.strip().strip("`"), re.findall(r"`([\w.]+)`", names)))
        for path, names in pairs:
            source = ROOT / "regenesis_pl" / path
            assert source.is_file(), f"hop {hop}: {path} is gone"
            for name in names:
                assert _defined(source, name), f"hop {hop}: {path} no longer defines {name}"
                checked += 1
    assert checked >= 15, checked
