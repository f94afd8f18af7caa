"""Round exports: after every round, the trained weights as a Hugging Face folder vLLM and transformers load.

``<run_dir>/export/round-<k>/`` holds what the module's ``export_hf`` writes: for LoRA/QLoRA the peft adapter
(safetensors, ``adapter_config.json`` naming the base model) with the tokenizer and its chat template; for
full fine-tuning the full safetensors weights with tokenizer and chat template. With ``merged`` a LoRA round
is also written merged into an unquantized copy of the base (``round-<k>-merged``). Each folder gets a
``regenesis_export.json`` (round, step, mode, base model, fingerprint of the trainable weights, the round's
evaluation, handed over in memory by the loop's owner), and at the end of the fit ``export/best.json`` names
the best round by in-domain accuracy.

With ``audit_frozen`` the frozen weights are hashed when training starts and at every export, and both
hashes are recorded: proof that training changed only what it should.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from regenesis_pl.atomic import write_json
from regenesis_pl.hashing import tensors_digest
from regenesis_pl.layout import RunLayout
from regenesis_pl.model.trained import trained_weights

log = logging.getLogger(__name__)

EXPORT_META = "regenesis_export.json"


def frozen_fingerprint(pl_module) -> tuple[str, int]:
    """sha256 (16 hex digits) over the names and bytes of every frozen parameter, and their element count."""
    frozen = [(name, p) for name, p in sorted(pl_module.named_parameters(), key=lambda kv: kv[0])
              if not p.requires_grad]
    return tensors_digest(frozen), sum(p.numel() for _, p in frozen)


class ExportCallback(Callback):
    """Writes each round's weights as a loadable Hugging Face folder under ``<run_dir>/export/``.

    Args:
        run_dir: Run directory (the fit CLI links it from ``data.run_dir``).
        merged: LoRA/QLoRA: also write the adapter merged into the unquantized base (``round-<k>-merged``), a
            plain model folder (full size on disk).
        audit_frozen: Hash the frozen weights at the start of training and at every export (costs a pass
            over the base weights on the CPU; meant for small models and tests).
    """

    def __init__(self, run_dir: str = "runs/fit", merged: bool = False, audit_frozen: bool = False) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(run_dir)
        self.merged = merged
        self.audit_frozen = audit_frozen
        self._frozen_at_start: tuple[str, int] | None = None
        self.exports: dict[int, str] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"exports": {str(k): v for k, v in self.exports.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.exports = {int(k): v for k, v in state_dict.get("exports", {}).items()}

    def on_train_start(self, trainer, pl_module) -> None:
        if self.audit_frozen and trainer.is_global_zero:
            self._frozen_at_start = frozen_fingerprint(pl_module)

    def export_round(self, trainer, pl_module, k: int, evaluation: dict[str, Any] | None = None) -> Path:
        """Write round k's folder(s) with the round's evaluation summary (if any) in their meta; every rank
        calls this (full weights are gathered under FSDP)."""
        start = time.perf_counter()
        weights = trained_weights(pl_module, "export callback")
        folder = self.layout.export(k)
        weights.export_hf(folder, merged=False)
        written = [folder]
        if self.merged and weights.adapter_only:
            written.append(weights.export_hf(self.layout.export(k, merged=True), merged=True))
        # on every rank: under FSDP the fingerprint gathers the full weights (a collective call)
        trainable = weights.trainable_state_fingerprint()
        if trainer.is_global_zero:
            meta = self._meta(trainer, pl_module, k, trainable, evaluation)
            meta["seconds"] = round(time.perf_counter() - start, 2)
            for path in written:
                write_json(Path(path) / EXPORT_META, {**meta, "merged": path != folder})
            log.info("round %d exported to %s in %.1f s", k, ", ".join(str(p) for p in written), meta["seconds"])
        self.exports[k] = str(folder)
        return folder

    def _meta(self, trainer, pl_module, k: int, trainable_fingerprint: str | None,
              summary: dict[str, Any] | None) -> dict[str, Any]:
        hparams = dict(pl_module.hparams)
        meta: dict[str, Any] = {
            "round": k, "step": trainer.global_step, "epoch": trainer.current_epoch,
            "mode": pl_module.mode, "base_model": str(hparams.get("base_model")),
            "trainable_fingerprint": trainable_fingerprint,
            "trainable_params": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
        }
        if summary is not None:
            meta["evaluation"] = {key: summary.get(key) for key in ("in_domain_mean", "ood_mean")}
            meta["evaluation"]["accuracy"] = {t: s["accuracy"] for t, s in summary.get("per_task", {}).items()}
        if self.audit_frozen:
            now = frozen_fingerprint(pl_module)
            meta["frozen"] = {"params": now[1], "fingerprint_now": now[0],
                              "fingerprint_at_train_start": self._frozen_at_start[0] if self._frozen_at_start else None}
        return meta

    def write_best(self, trainer, best_round: int | None) -> None:
        """Rank 0: ``export/best.json`` naming the best round's export (the loop's owner calls it at the end)."""
        if not trainer.is_global_zero or best_round is None or best_round not in self.exports:
            return
        write_json(self.layout.best_export, {"round": best_round, "path": self.exports[best_round]})
        log.info("best round: %d (%s)", best_round, self.exports[best_round])
