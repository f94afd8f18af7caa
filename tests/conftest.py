"""Test-suite policy: fast tests first, slow tests (real model, real engines) after them, within a time budget.

CI runs everything, but the machine is shared and small: once ``REGENESIS_TEST_BUDGET_S`` seconds (default
3300) have passed since the session started, the remaining slow tests are skipped with an explicit reason,
and the skips are counted in pytest's summary. GPU tests skip without CUDA.
"""

from __future__ import annotations

import os
import time

import pytest

_START = time.monotonic()


def pytest_collection_modifyitems(config, items):
    # Stable sort: fast tests keep their order and run first; slow ones follow, vLLM ones last.
    items.sort(key=lambda item: ("slow" in item.keywords) + ("vllm" in item.keywords))
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def pytest_runtest_setup(item):
    budget = float(os.environ.get("REGENESIS_TEST_BUDGET_S", "3300"))
    spent = time.monotonic() - _START
    if "slow" in item.keywords and spent > budget:
        pytest.skip(f"test time budget spent ({spent:.0f} s > REGENESIS_TEST_BUDGET_S={budget:.0f} s)")
