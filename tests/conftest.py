"""Test-suite policy: fast tests first, slow tests (real model, real engines) after them, within a time budget.

CI runs everything, but the machine is shared and small: once ``REGENESIS_TEST_BUDGET_S`` seconds (default
3600, so that it fires inside CI's 90 minutes with set-up and the longest test counted) have passed since the
session started, the remaining slow tests are skipped with an explicit reason, counted in pytest's summary,
and the session then FAILS: a green run must have run every real-model, real-engine, multi-process and
``Trainer.fit`` test. GPU tests skip without CUDA.

``REGENESIS_FULL_SUITE=1`` (what ``scripts/test.sh`` sets when it is given no arguments, as CI calls it) refuses
a run that would leave tests out: a marker or keyword selection (``-m``, ``-k``), ``--deselect``, test paths or
node ids, ``PYTEST_ADDOPTS``, or any deselected test.
"""

from __future__ import annotations

import os
import time

import pytest

_START = time.monotonic()
DEFAULT_BUDGET_S = 3600


def _full_suite() -> bool:
    return os.environ.get("REGENESIS_FULL_SUITE", "") == "1"


def pytest_configure(config):
    if not _full_suite():
        return
    narrowing = [name for name, on in (
        ("-m", bool(config.option.markexpr)), ("-k", bool(config.option.keyword)),
        ("--deselect", bool(config.getoption("deselect", None))),
        ("PYTEST_ADDOPTS", bool(os.environ.get("PYTEST_ADDOPTS", "").strip())),
        ("test paths", config.args_source is not pytest.Config.ArgsSource.TESTPATHS),
    ) if on]
    if narrowing:
        raise pytest.UsageError(f"REGENESIS_FULL_SUITE=1 runs every test, but {', '.join(narrowing)} would leave "
                                "some out; drop them, or unset REGENESIS_FULL_SUITE to run a part")


def pytest_deselected(items):
    if items and _full_suite():
        raise pytest.UsageError(f"REGENESIS_FULL_SUITE=1 runs every test, but {len(items)} were deselected "
                                f"(e.g. {items[0].nodeid}); unset REGENESIS_FULL_SUITE to run a part")


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


_BUDGET_SKIPS: list[str] = []


def pytest_runtest_setup(item):
    budget = float(os.environ.get("REGENESIS_TEST_BUDGET_S", str(DEFAULT_BUDGET_S)))
    spent = time.monotonic() - _START
    if "slow" in item.keywords and spent > budget:
        _BUDGET_SKIPS.append(item.nodeid)
        pytest.skip(f"test time budget spent ({spent:.0f} s > REGENESIS_TEST_BUDGET_S={budget:.0f} s)")


def pytest_sessionfinish(session, exitstatus):
    if _BUDGET_SKIPS and exitstatus == 0:
        session.exitstatus = 1  # skipped for time is not proven: fail the run


def pytest_terminal_summary(terminalreporter):
    if _BUDGET_SKIPS:
        terminalreporter.write_line(f"FAILED: {len(_BUDGET_SKIPS)} slow test(s) skipped for the time budget, e.g. "
                                    f"{_BUDGET_SKIPS[0]}; a green run must run them all", red=True)


# ------------------------------------------------------------------------------------------ shared fixtures
@pytest.fixture(scope="module")
def model_dir():
    """The embedded model's folder (prepared by scripts/prepare.sh)."""
    from regenesis_pl.model_source import resolve_model

    return resolve_model("embedded")


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory):
    """A random-init LoRA (r=8) on the embedded model: it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(model, config).save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """The tiny real study of ``tests/tiny_study.py``, killed mid-arm and resumed: run once, read by the study
    test and by the STaR and LMSI baseline fit tests."""
    from tiny_study import run_killed_then_resumed

    return run_killed_then_resumed(tmp_path_factory.mktemp("tiny_study"))
