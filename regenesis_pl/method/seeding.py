"""Deterministic per-request seeds derived from stable keys, never from a request's position in a batch.

A resumed or re-chunked run builds the same requests with the same seeds, so a cache keyed by request
returns exactly what the interrupted run would have generated.
"""

from __future__ import annotations

import hashlib
import random


def stable_seed(*parts: object) -> int:
    """A 31-bit seed from the string forms of ``parts`` (e.g. base seed, round, stage, question id, ...)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def stable_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded with ``stable_seed(*parts)`` (for seeded choices such as the k cap)."""
    return random.Random(stable_seed(*parts))
