"""Every stable hash of the package: request seeds, short digests of settings, and settings differences.

Seeds come from stable keys (base seed, round, stage, question id, ...), never from a request's position in
a batch or the rank that sends it: a resumed, re-chunked or sharded run builds the same requests with the
same seeds, so a store keyed by request returns exactly what any other layout of the run would generate.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from typing import Any


def digest(value: Any, length: int = 16) -> str:
    """Short sha256 hex digest of a JSON-able value (keys sorted, so dict order does not matter)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def config_hash(config: Any) -> str:
    """The hash a run directory, round marker or checkpoint records for its settings."""
    return digest(config, 16)


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) settings dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def has_dotted_key(config: Any, dotted: str) -> bool:
    """Whether a nested dict holds ``dotted`` (``"data.synthesis.order"``), as ``config_differences`` names keys."""
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return False
        config = config[part]
    return True


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from the string forms of ``parts`` (e.g. base seed, round, stage, question id, ...)."""
    raw = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(raw[:4], "big") & 0x7FFFFFFF


def stable_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded with ``stable_seed(*parts)`` (for seeded choices such as the k cap)."""
    return random.Random(stable_seed(*parts))


def completion_seed(request_seed: int, sample: int) -> int:
    """Seed of completion ``sample`` of a request: the request seed itself for the first, derived for others
    (derived rather than ``seed + sample`` so neighbouring requests never share a sample stream)."""
    if sample == 0:
        return int(request_seed)
    return stable_seed("completion", int(request_seed), sample)


def resolve_request_seeds(n: int, base_seed: int, request_seeds: Sequence[int] | None) -> list[int]:
    """The seed of each of ``n`` requests: ``request_seeds[i]``, or ``base_seed + i`` when None.

    The one rule shared by the engines and the generation store (whose keys include the seed)."""
    if request_seeds is None:
        return [base_seed + i for i in range(n)]
    if len(request_seeds) != n:
        raise ValueError(f"request_seeds has {len(request_seeds)} entries for {n} conversations; "
                         "pass one seed per conversation or None")
    return [int(s) for s in request_seeds]


def plain(value: Any) -> Any:
    """JSON-ready form of settings (dataclasses, namespaces, mappings, sequences, paths, enums), keys sorted:
    what ``config_hash`` and ``config_differences`` are given."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if hasattr(value, "as_dict"):  # jsonargparse Namespace
        return plain(value.as_dict())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(getattr(value, "value", value))


def tensors_digest(named: Iterable[tuple[str, Any]], as_float32: bool = False, length: int = 16) -> str:
    """sha256 (hex, ``length`` digits) over the names and raw bytes of tensors, in the order given; with
    ``as_float32`` each tensor is cast first (a fingerprint that does not depend on the training dtype)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in named:
        h.update(name.encode())
        t = tensor.detach().to("cpu", torch.float32) if as_float32 else tensor.detach().to("cpu")
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


def update_with_file(h, path, limit: int | None = None) -> None:
    """Feed a file (its first ``limit`` bytes, or all of it) into a hashlib object, 4 MiB at a time."""
    left = limit
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(1 << 22 if left is None else min(1 << 22, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)


def file_sha256(path) -> str:
    """Full sha256 hex digest of a file."""
    h = hashlib.sha256()
    update_with_file(h, path)
    return h.hexdigest()
