"""A short, stable fingerprint of the weights an engine serves (base model folder + optional LoRA adapter).

It is part of the synthesis store key, so a new adapter or new full weights never return generations made
by older weights. Small files (configs, tokenizer, adapters) are hashed in full; large base weight files by
size, modification time and their first and last megabyte, which is enough to notice any re-save and cheap
for multi-GB checkpoints.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from regenesis_pl.hashing import update_with_file

FULL_HASH_LIMIT = 64 << 20  # files up to 64 MiB are hashed in full
EDGE = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SMALL_SUFFIXES = (".json", ".jinja", ".model", ".txt")
SKIP_NAMES = {"regenesis_check.json"}  # the embedded model's check marker is not part of the weights


def weights_fingerprint(model_dir: str, adapter_dir: str | None = None) -> str:
    """Hash of the served weights; changes whenever the base folder's weights or the adapter change.

    Args:
        model_dir: The base model folder (or, when it is not a local folder, a hub id that is hashed as text).
        adapter_dir: A peft adapter folder, hashed in full, or None for the bare weights.
    """
    digest = hashlib.sha256()
    digest.update(b"base\0")
    _update_with_folder(digest, model_dir, full=False)
    if adapter_dir is not None:
        digest.update(b"\0adapter\0")
        if not Path(adapter_dir).is_dir():
            raise FileNotFoundError(f"adapter folder {adapter_dir!r} does not exist; pass a peft save_pretrained "
                                    "folder or None")
        _update_with_folder(digest, adapter_dir, full=True)
    return digest.hexdigest()[:16]


def _update_with_folder(digest, folder: str, full: bool) -> None:
    root = Path(folder).expanduser()
    if not root.is_dir():
        digest.update(f"id:{folder}".encode())
        return
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES + SMALL_SUFFIXES
                   and p.name not in SKIP_NAMES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0".encode())
        if path.name == "adapter_config.json":
            digest.update(_canonical_adapter_config(path))
        elif full or stat.st_size <= FULL_HASH_LIMIT:
            update_with_file(digest, path)
        else:
            digest.update(str(stat.st_mtime_ns).encode())
            with open(path, "rb") as fh:
                digest.update(fh.read(EDGE))
                fh.seek(stat.st_size - EDGE)
                digest.update(fh.read(EDGE))


def _canonical_adapter_config(path: Path) -> bytes:
    """peft writes ``target_modules`` from a set, in an order that changes from process to process: the same
    adapter saved twice must have one fingerprint (a resumed fit must find its stored generations)."""
    import json

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return path.read_bytes()
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    return json.dumps(config, sort_keys=True).encode("utf-8")
