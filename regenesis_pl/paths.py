"""Where regenesis_pl keeps its files by default: one place, overridable with ``REGENESIS_HOME``.

Layout under the home folder (``~/.cache/regenesis_pl`` unless ``REGENESIS_HOME`` is set)::

    data/        prepared task splits: data/<source>/<task>/{train,test}.jsonl + provenance.json
    models/      converted local models (e.g. models/smollm2-135m-instruct)
    downloads/   package archives fetched once by ``regenesis prepare data`` (bigbench sdist, ...)

Every function only computes a path; none creates a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "REGENESIS_HOME"
DEFAULT_HOME = Path("~/.cache/regenesis_pl")


def home_dir() -> Path:
    """The regenesis home folder: ``$REGENESIS_HOME`` or ``~/.cache/regenesis_pl``."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser() if value else DEFAULT_HOME.expanduser()


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of prepared task data (``override`` wins when given)."""
    return Path(override).expanduser() if override else home_dir() / "data"


def models_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of local models (``override`` wins when given)."""
    return Path(override).expanduser() if override else home_dir() / "models"


def downloads_dir(override: str | os.PathLike | None = None) -> Path:
    """Folder of downloaded package archives (``override`` wins when given)."""
    return Path(override).expanduser() if override else home_dir() / "downloads"
