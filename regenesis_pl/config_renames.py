"""Config keys that were renamed or moved: a config written before still parses into one line naming the new key.

Keys are dotted paths of a fit configuration; the other commands take the same settings at other prefixes
(``regenesis synthesize`` has ``synthesis`` at the top, ``regenesis study`` has the fit under ``fit``).
"""

from __future__ import annotations

import re
from typing import Any

from regenesis_pl.hashing import has_dotted_key

# old fit key -> (new key, why it moved)
FIT_RENAMES = {
    "model.model": ("model.base_model", "the key names the base model the fit starts from and the engines serve"),
    "rounds": ("round_driver", "the section configures the RoundDriver callback; data.rounds is the round count"),
    "data.synthesis.schedule": ("data.synthesis.order", "'schedule' now names only the round schedule"),
}

# the prefix under which each command takes the fit's keys: "data.synthesis." becomes "synthesis." in synthesize
COMMAND_PREFIXES = {"fit": ("", ""), "validate": ("", ""), "test": ("", ""),
                    "synthesize": ("data.synthesis.", "synthesis."), "study": ("", "fit.")}


def _renames(command: str) -> dict[str, tuple[str, str]]:
    drop, add = COMMAND_PREFIXES.get(command, (None, None))
    if drop is None:
        return {}
    return {add + old[len(drop):]: (add + new[len(drop):], why) for old, (new, why) in FIT_RENAMES.items()
            if old.startswith(drop)}


def renamed_key_in_config(raw: Any, command: str = "fit") -> str | None:
    """One line for the first renamed key a parsed config (a dict) still uses, or None."""
    for old, (new, why) in _renames(command).items():
        if has_dotted_key(raw, old):
            return f"{old} is now {new} ({why}); rename it"
    return None


def renamed_key_in_options(argv: list[str], command: str) -> str | None:
    """One line for the first renamed key given as a command-line option (``--model.model=x``), or None."""
    for arg in argv:
        match = re.match(r"--([\w.]+)", arg)
        if not match:
            continue
        for old, (new, why) in _renames(command).items():
            if match.group(1) == old or match.group(1).startswith(old + "."):
                given = match.group(1)
                return f"--{given} is now --{new}{given[len(old):]} ({why})"
    return None
