"""The callback that owns the generation engines of a fit run and keeps them serving the current weights.

Every rank builds its own engine on its own device (one vLLM per GPU; with ``engine.tensor_parallel_size``
g > 1, the first rank of each group of g runs one engine over the group's GPUs), lazily, at the first
synthesis or evaluation. Before each use the current training weights are pushed into every engine
(``callbacks.weight_push``: an adapter request, the adapter folded into the weights, or full weights).
Engines are woken for use (vLLM sleep mode, CUDA only; the trainer's cached GPU memory is released first)
and put back to sleep before training resumes. Every push, wake, use and sleep is timed;
the per-round totals (and the push share of the round's wall time) are logged and written to
``<run_dir>/engine_timings.json`` for the report.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from typing import Any

from lightning.pytorch import Callback

from regenesis_pl.atomic import write_json
from regenesis_pl.callbacks.weight_push import QLoRABase, WeightPush
from regenesis_pl.engines.factory import EngineConfig
from regenesis_pl.engines.push_mode import PushMode, check_push_settings
from regenesis_pl.layout import RunLayout
from regenesis_pl.model.trained import trained_weights
from regenesis_pl.sharding import Shard

log = logging.getLogger(__name__)


class EngineCallback(Callback):
    """Builds each rank's generation engine once and serves the module's current weights through it.

    Args:
        engine: The engine settings (``EngineConfig``: backend, dtype, lengths, LoRA slots, memory, sleep mode,
            tensor parallel size).
        model: Base model the engines load; None = the LightningModule's ``model`` hyperparameter (the fit
            CLI links it from ``model.base_model`` so it is written once).
        run_dir: Run directory: pushed adapters/weights and ``engine_timings.json`` go here.
        keep_full_weights: How many pushed full or merged weight folders to keep on disk (older ones are
            deleted once the engines loaded a newer one); adapters are small and always kept.
        push: LoRA/QLoRA: how the trained adapter reaches the engines: "adapter" (a LoRA request), "merged"
            (folded into the served weights: base-model decode speed) or "auto" (measured once per run).
            The choice and its reason go to ``engine_timings.json`` and the report.
        qlora_base: QLoRA: the base the engines serve the adapter on: "nf4" (the 4-bit base the adapter is
            trained against, dequantized into the engine's dtype once per run: the served model is the trained
            one) or "original" (the unquantized base folder: no extra copy, but the served model differs from
            the trained one by the 4-bit quantization error). Ignored for LoRA and full fine-tuning.
    """

    def __init__(self, engine: EngineConfig | None = None, model: str | None = None, run_dir: str = "runs/fit",
                 keep_full_weights: int = 1, push: PushMode = "auto",
                 qlora_base: QLoRABase = "nf4") -> None:
        super().__init__()
        self.layout = RunLayout(run_dir)
        self.weights = WeightPush(self.layout, push, qlora_base, keep_full_weights)
        self.config = engine or EngineConfig()
        self.backend = self.config.backend
        self.model = model
        self.engine = None
        self._awake = True
        self._round = -1
        self._current: dict[str, Any] | None = None
        self.build_s = 0.0
        self.build_window: tuple[float, float] | None = None
        self.events: list[dict[str, Any]] = []
        self.rounds: dict[int, dict[str, float]] = {}

    # ------------------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events, "rounds": {str(k): v for k, v in self.rounds.items()},
                "push": self.weights.facts()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = list(state_dict.get("events", []))
        self.rounds = {int(k): v for k, v in state_dict.get("rounds", {}).items()}
        self.weights.restore(state_dict.get("push") or {})

    @property
    def served_adapter(self) -> str | None:
        """The adapter folder of the last push (LoRA/QLoRA), whichever way it is served."""
        return self.weights.served_adapter

    # ------------------------------------------------------------------------------ building
    def model_name(self, pl_module) -> str:
        """The base model the engine serves: this callback's ``model`` or the module's ``model`` hyperparameter."""
        name = self.model or pl_module.hparams.get("base_model")
        if not name:
            raise ValueError("engine callback: no model to serve; set `model` on the EngineCallback or use a "
                             "LightningModule with a `model` hyperparameter")
        return str(name)

    def shard(self, trainer) -> Shard:
        """This rank's share of generation work (engines are grouped by ``tensor_parallel_size``)."""
        return Shard(trainer.global_rank, trainer.world_size, self.config.tensor_parallel_size)

    def _build(self, trainer, pl_module):
        from regenesis_pl.engines.factory import build_engine

        start, began = time.perf_counter(), time.time()
        name = self.model_name(pl_module)
        device = trainer.strategy.root_device
        device = str(device) if device.type == "cuda" else None
        lora = trained_weights(pl_module, "engine callback").adapter_only and self.weights.mode != "merged"
        _release_cached_memory("engine build")
        self.engine = build_engine(self.config, name, enable_lora=lora, device=device,
                                   label=f"on rank {trainer.global_rank} (built once per run)")
        self.build_s = time.perf_counter() - start
        self.build_window = (began, time.time())
        self._awake = True
        self.weights.forget()
        return self.engine

    # ------------------------------------------------------------------------------ weights
    def _engine_dtype(self, trainer):
        """The dtype the engines serve in (the pushed weights are written in it: no fp32 copy for a bf16 engine)."""
        import torch

        from regenesis_pl.engines.prompt_jobs import engine_dtype

        name = getattr(self.engine, "dtype", None)
        if not isinstance(name, str):
            name = engine_dtype(self.config.dtype, trainer.strategy.root_device.type == "cuda")
        return getattr(torch, name)

    # ------------------------------------------------------------------------------ serving
    def begin_round(self, k: int) -> None:
        """Mark the start of round k (the loop's owner calls this when it prepares the round's data); a round
        already timed (restored from a checkpoint) keeps its window."""
        self._round = k
        self.rounds.setdefault(k, {"start": time.time()})

    def engine_for_current_weights(self, pl_module, purpose: str = "generate", round_k: int | None = None):
        """Push the module's current weights into this rank's engine and wake it; returns the engine (None on
        a rank without one: tensor-parallel group members other than the first).

        Call ``release()`` when done, or use ``serving()`` which does both. Every rank must call this (a full
        fine-tuning push gathers the weights from all ranks). ``round_k`` tags the timings (default: the round
        being prepared or trained; -1 for the base evaluation).
        """
        trainer = pl_module.trainer
        has_engine = self.shard(trainer).has_engine
        if self.engine is None and has_engine:
            self._build(trainer, pl_module)
        began = time.time()
        wake_s = 0.0
        if self.engine is not None and not self._awake:
            start = time.perf_counter()
            _release_cached_memory("engine wake")
            self.engine.wake()
            self._awake = True
            wake_s = time.perf_counter() - start
        start = time.perf_counter()  # a push includes loading the dequantized QLoRA base (once per engine)
        pushed = self.weights.push(trainer, pl_module, self.engine, self._round, self.model_name(pl_module),
                                   self._engine_dtype(trainer))
        push_s = time.perf_counter() - start
        self._current = {"round": self._round if round_k is None else round_k, "purpose": purpose, "step": trainer.global_step,
                         "epoch": trainer.current_epoch, "pushed": pushed, "push_s": round(push_s, 4),
                         "wake_s": round(wake_s, 4), "adapter": self.served_adapter, "t0": time.perf_counter(),
                         "start": began}
        if self.engine is not None:
            self._current["weights_id"] = self.engine.weights_id
        if pushed and trainer.is_global_zero:
            log.info("engine: pushed weights for %s to %d engine(s) in %.2f s (%s)", purpose,
                     trainer.world_size // self.config.tensor_parallel_size, push_s,
                     f"{self.served_adapter}, merged" if self.weights.choice == "merged" else self.served_adapter
                     or "full weights")
        return self.engine

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
        if not (self.engine is not None and self._awake):
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
        data = {"backend": self.backend, "build_s": round(self.build_s, 2), "rounds": self.round_summary(),
                "push": self.weights.facts(),
                "processes": trainer.world_size, "events": self.events}
        write_json(self.layout.timings, data)

    # ------------------------------------------------------------------------------ hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        """On CPU with several processes per machine, give each its share of the cores (unless OMP_NUM_THREADS
        says otherwise): oversubscribed threads made generation many times slower on a small machine."""
        import os

        import torch

        weights = trained_weights(pl_module, "engine callback")  # refuse before any round runs, not at a push
        check_push_settings(self.weights.mode, self.backend, weights.mode, int(pl_module.hparams.get("lora_r", 0)),
                            self.config.max_lora_rank)
        local = max(1, int(getattr(trainer, "num_devices", 1) or 1))
        if trainer.strategy.root_device.type == "cpu" and local > 1 and "OMP_NUM_THREADS" not in os.environ:
            threads = max(1, (os.cpu_count() or 1) // local)
            torch.set_num_threads(threads)
            log.info("engine: rank %d uses %d CPU thread(s) (%d processes on this machine)", trainer.global_rank,
                     threads, local)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sleep(trainer)  # training never runs beside an awake engine

    def end_round(self, trainer, k: int) -> None:
        """Log round k's engine totals (the loop's owner calls this once the round's last engine use ended)."""
        if k in self.rounds:
            summary = self.round_summary()[k]
            self._log(trainer, {"engine/round_s": summary["seconds"], "engine/round_push_s": summary["push_s"],
                                "engine/round_push_share": summary["push_share"]})

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Shut the engine down (idempotent)."""
        engine, self.engine = self.engine, None
        self.weights.forget()
        if engine is not None:
            engine.close()


def _release_cached_memory(why: str) -> None:
    """Give the trainer's cached CUDA blocks back before an engine allocates (vLLM checks free memory when it
    starts and re-maps its pool on wake), and log what is reserved and free at this hand-over."""
    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    log.info("%s: %.1f GiB reserved by training, %.1f of %.1f GiB free", why, torch.cuda.memory_reserved() / 2**30,
             free / 2**30, total / 2**30)
