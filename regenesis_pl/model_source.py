"""What a model name in a config means: the embedded model, a local Hugging Face folder, or a hub id.

Engines, the model builder and the commands all resolve names here, so "embedded" means one folder everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from regenesis_pl.embedded_model import EMBEDDED_NAMES, prepare_embedded_model


def resolve_model(name_or_path: str) -> str:
    """Map a model name from a config to what the backends load.

    "embedded" / "smollm2-135m-instruct" -> the prepared embedded folder (prepared on first use); an existing
    local folder -> itself (it must hold config.json); something path-like that does not exist -> error;
    anything else is taken as a Hugging Face hub id and returned unchanged.
    """
    name = str(name_or_path).strip()
    if not name:
        raise ValueError("model: empty name; use 'embedded', a local model folder or a hub id")
    if name.lower() in EMBEDDED_NAMES:
        return str(prepare_embedded_model())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model folder {path} has no config.json; point to a Hugging Face model "
                                    "folder (save_pretrained output)")
        return str(path.resolve())
    if path.exists():
        raise ValueError(f"model {name!r} is a file, not a folder; point to the folder holding config.json")
    if _looks_like_path(name):
        raise FileNotFoundError(f"model folder {name!r} does not exist; check the path, or use 'embedded'")
    return name


def hub_load_error(name: str, err: Exception) -> OSError:
    """A one-line error for a model that could not be loaded from the hub (unreachable or unknown id)."""
    return OSError(f"could not load model {name!r}: not a local folder and the Hugging Face hub is unreachable "
                   f"or has no such id ({type(err).__name__}); pass a local model folder or 'embedded'")


def _looks_like_path(name: str) -> bool:
    """Hub ids look like ``org/name``; anything else with path syntax is meant as a local path."""
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/") or os.path.isabs(name))
