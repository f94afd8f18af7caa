"""How a fit's current weights reach one rank's engine: when to push, what to write, how to serve it.

- LoRA / QLoRA: rank 0 writes the adapter to ``<run_dir>/adapters/round-<k>-step-<s>``. With ``push: adapter``
  every engine serves that folder as a new LoRA request; with ``push: merged`` the adapter is also folded into
  a copy of the base in the engine's dtype (``<run_dir>/weights/round-<k>-step-<s>``), which every engine loads
  in place and decodes at the base model's speed; ``auto`` measures both once per run (``engines.push_mode``).
  Either way the base is never changed in place, so an adapter can never be applied twice (after a resume,
  the adapter weights come from the checkpoint alone), and both serve under the adapter's weights id.
- QLoRA trains its adapter against a 4-bit base. By default (``qlora_base: nf4``) the engines first load that
  base dequantized (written once per run to ``<run_dir>/weights/base-nf4``), so they serve the model being
  trained, not the unquantized original, whichever way the adapter is pushed.
- full fine-tuning: the weights are gathered (all ranks take part under FSDP), written once in the engine's
  dtype to ``<run_dir>/weights/round-<k>-step-<s>``, and every engine loads them in place (``load_weights``).

Weights that did not change since the last push (same step and same trainable-state fingerprint) are not
pushed again.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from regenesis_pl.atomic import read_json, write_json
from regenesis_pl.engines.fingerprint import weights_fingerprint
from regenesis_pl.engines.push_mode import check_mode, measured_choice, probe, static_choice
from regenesis_pl.layout import RunLayout
from regenesis_pl.model.trained import trained_weights

log = logging.getLogger(__name__)

QLoRABase = Literal["nf4", "original"]
BASE_MARKER = "made_from.json"  # beside the dequantized QLoRA base: the model and dtype it was made from


class WeightPush:
    """What one rank's engine serves, and the pushes that change it (owned by ``EngineCallback``).

    Args:
        layout: The run's layout (where pushed folders and the dequantized QLoRA base go).
        mode: The ``generation.push`` setting.
        qlora_base: The ``generation.qlora_base`` setting.
        keep_full_weights: How many pushed full or merged weight folders stay on disk.
    """

    def __init__(self, layout: RunLayout, mode: str = "auto", qlora_base: QLoRABase = "nf4",
                 keep_full_weights: int = 1) -> None:
        check_mode(mode)
        if qlora_base not in ("nf4", "original"):
            raise ValueError(f"generation.qlora_base={qlora_base!r} is unknown; use nf4 or original")
        if keep_full_weights < 1:
            raise ValueError(f"generation: keep_full_weights={keep_full_weights} must be >= 1")
        self.layout, self.mode, self.qlora_base, self.keep_full_weights = layout, mode, qlora_base, keep_full_weights
        self.choice: str | None = None  # "adapter", "merged" or "weights", once known
        self.reason = ""
        self.base_note = ""  # QLoRA: which base the engines serve, for the report
        self.served_adapter: str | None = None
        self._pushed_dirs: list[Path] = []
        self._pushes = 0
        self.forget()

    def facts(self) -> dict[str, Any]:
        """The push mode, choice and reason (and the QLoRA base served) for the checkpoint and the report."""
        facts = {"mode": self.mode, "choice": self.choice, "reason": self.reason}
        return {**facts, "base": self.base_note} if self.base_note else facts

    def restore(self, facts: dict[str, Any]) -> None:
        """A resumed run keeps its measured choice; a changed ``push`` setting decides again."""
        if facts.get("mode") == self.mode:
            self.choice, self.reason = facts.get("choice"), facts.get("reason", "")

    def forget(self) -> None:
        """The engine was built or closed: it serves the model folder, and nothing pushed."""
        self._pushed_key: tuple | None = None
        self._serving: tuple[int, str] | None = None  # (push number, how): a push served twice loads once
        self._base_dir: str | None = None
        self.served_adapter = None

    # ------------------------------------------------------------------------------ pushing
    def push(self, trainer, pl_module, engine, round_k: int, model: str, dtype) -> bool:
        """Hand the current weights to this rank's engine (every rank calls this: writing may gather weights);
        ``model`` is the base model's name, ``dtype`` the engine's. Returns whether anything was pushed."""
        self.serve_trained_base(trainer, pl_module, engine, model, dtype)  # QLoRA: once per engine
        key = self._weights_key(trainer, pl_module)
        if key == self._pushed_key:
            return False
        adapter_only = trained_weights(pl_module, "weight push").adapter_only
        if trainer.global_step == 0 and trainer.ckpt_path is None and self._pushed_key is None:
            # Step 0 without a checkpoint: the module holds the base weights (new LoRA adapters have B = 0) and
            # the engines serve them (QLoRA: its dequantized base): nothing to transfer.
            self._pushed_key = key
            return False
        stage = str(getattr(trainer.state.fn, "value", trainer.state.fn))
        self._pushes += 1
        choice = self._static_choice(pl_module)
        folder = weights = None
        if adapter_only:
            folder = Path(pl_module.save_adapter(self.layout.pushed(True, round_k, trainer.global_step, stage)))
            self.served_adapter = str(folder)
        if choice != "adapter":  # merged, full, or auto still to measure: every rank takes part (FSDP gathers)
            weights = Path(pl_module.save_served_weights(self.layout.pushed(False, round_k, trainer.global_step,
                                                                            stage), dtype))
        trainer.strategy.barrier("regenesis-push")  # the folders are complete before any engine reads them
        if choice is None:
            choice = self._measure(trainer, engine, folder, weights, model)
        self._serve(engine, choice, folder, weights, model)
        if weights is not None:
            trainer.strategy.barrier("regenesis-loaded")  # every engine read it before an old folder goes
            if trainer.is_global_zero:
                self._retire(weights)
        self._pushed_key = key
        return True

    def serve_trained_base(self, trainer, pl_module, engine, model: str, dtype) -> None:
        """QLoRA with ``qlora_base: nf4``: the engine loads the 4-bit base the adapter trains against, dequantized
        into ``dtype`` (every rank calls this; rank 0 writes the folder once per run and a resumed run reuses it,
        so its fingerprint, and the store keys built on it, stay the same)."""
        if self._base_dir is not None or trained_weights(pl_module, "weight push").mode != "qlora":
            return
        if self.qlora_base == "original":
            self.base_note = ("original: the unquantized base (generation.qlora_base: original); the served model "
                              "differs from the trained one by the 4-bit quantization error")
            self._base_dir = self._base_folder(model)
        else:
            folder = self.layout.served_base
            made_from = {"model": model, "fingerprint": weights_fingerprint(self._base_folder(model), None),
                         "dtype": str(dtype), "quantization": "nf4, double quant"}
            if trainer.is_global_zero and _made_from(folder) != made_from:  # reused only if made from the same
                pl_module.save_served_weights(folder, dtype, base_only=True)
                write_json(folder / BASE_MARKER, made_from)
            trainer.strategy.barrier("regenesis-base")
            if engine is not None:
                engine.load_weights(str(folder))
            self._base_dir = str(folder)
            self.base_note = (f"nf4: the 4-bit base the adapter trains against, dequantized to "
                              f"{str(dtype).removeprefix('torch.')} ({folder})")
        log.info("engine: QLoRA adapters are served on the %s", self.base_note)

    # ------------------------------------------------------------------------------ helpers
    @staticmethod
    def _weights_key(trainer, pl_module) -> tuple:
        """Step plus, for adapters, a hash of the trainable weights (cheap; catches a reset to the base).
        Full weights are keyed by step alone: hashing them would gather billions of parameters."""
        weights = trained_weights(pl_module, "weight push")
        return (trainer.global_step, weights.trainable_state_fingerprint() if weights.adapter_only else None)

    def _static_choice(self, pl_module) -> str | None:
        """The push choice when it needs no measurement (logged once); None while ``auto`` has not measured."""
        if self.choice is None:
            weights = trained_weights(pl_module, "weight push")
            mode = weights.mode if weights.adapter_only else "full"
            blocker = weights.merge_blocker() if weights.adapter_only and self.mode != "adapter" else None
            self.choice, self.reason = static_choice(self.mode, mode, blocker)
            if self.choice is not None:
                log.info("engine: trained weights reach the engines as %s (%s)", self.choice, self.reason)
        return self.choice

    def _measure(self, trainer, engine, folder: Path, weights: Path, model: str) -> str:
        """``auto``: rank 0 times a greedy probe served both ways and every rank takes its pick."""
        decision = None
        if trainer.is_global_zero and engine is not None:
            self._serve(engine, "adapter", folder, weights, model)
            through_adapter = probe(engine)
            self._serve(engine, "merged", folder, weights, model)
            merged = probe(engine)
            decision = measured_choice(through_adapter, merged)
        self.choice, self.reason = trainer.strategy.broadcast(decision, src=0)
        log.info("engine: trained weights reach the engines as %s (%s)", self.choice, self.reason)
        return self.choice

    def _serve(self, engine, choice: str, folder: Path | None, weights: Path | None, model: str) -> None:
        """Make the engine serve the pushed weights the chosen way; nothing to do when it already does
        (``auto``'s probe on rank 0 ends serving the push merged)."""
        if self._serving == (self._pushes, choice):
            return
        if engine is not None:
            if choice == "adapter":
                if self._serving is not None and self._serving[1] == "merged":
                    # the merged weights go; the adapter applies to the base again
                    engine.load_weights(self._base_folder(model))
                engine.set_adapter(str(folder))
            elif choice == "merged":  # the same weights as the adapter path, so the same weights id
                engine.set_adapter(None)
                engine.load_weights(str(weights), weights_fingerprint(self._base_folder(model), str(folder)))
            else:
                engine.load_weights(str(weights))
        self._serving = (self._pushes, choice)

    def _base_folder(self, model: str) -> str:
        """The base served under an adapter: the dequantized 4-bit base (QLoRA, ``nf4``) or the model's folder."""
        from regenesis_pl.model_source import resolve_model

        return self._base_dir or resolve_model(model)

    def _retire(self, newest: Path) -> None:
        self._pushed_dirs.append(newest)
        while len(self._pushed_dirs) > self.keep_full_weights:
            shutil.rmtree(self._pushed_dirs.pop(0), ignore_errors=True)



def _made_from(folder: Path) -> dict | None:
    """What the dequantized base in ``folder`` was made from, or None when it is missing or incomplete."""
    try:
        made_from = read_json(folder / BASE_MARKER, "dequantized base marker")
    except (OSError, ValueError):
        return None
    return made_from if (folder / "model.safetensors").is_file() else None
