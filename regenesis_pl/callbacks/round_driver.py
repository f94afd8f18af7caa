"""The one owner of a self-improvement round: what happens when round k starts and when it ends.

A round, in order (every rank runs every step; see README "Architecture"):

1. start (the DataModule asks for round k's records when the Trainer reloads its dataloader):
   read the round back when this configuration already completed it, otherwise push the current weights
   into every rank's engine and synthesize: each rank its shard of the questions, rank 0 merges by question
   id (``round.synthesize.synthesize_to_store``); with ``restart_from_base`` the module then returns to the
   base weights (rounds after the first);
2. training epochs over the round's records (Lightning);
3. end (the round's last epoch ends): evaluate the trained weights (``EvaluationCallback.evaluate_round``:
   every rank answers its share), export them with that evaluation (``ExportCallback.export_round``), log the
   round's engine totals; Lightning then writes the checkpoint that makes the round durable.

The driver talks to the other callbacks through the references ``connect`` gives it, never by searching the
Trainer's callbacks.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from lightning.pytorch import Callback

from regenesis_pl.atomic import read_json, write_json
from regenesis_pl.callbacks.engine import EngineCallback
from regenesis_pl.callbacks.evaluation import EvaluationCallback
from regenesis_pl.callbacks.export import ExportCallback
from regenesis_pl.data.datamodule import ReGenesisDataModule
from regenesis_pl.hashing import config_hash
from regenesis_pl.layout import RunLayout
from regenesis_pl.round.sft_records import load_sft_records
from regenesis_pl.round.synthesize import EmptyRoundError, served_by, synthesize_to_store
from regenesis_pl.sharding import DEFAULT_WAIT_MINUTES, mark_failed

log = logging.getLogger(__name__)

READ_BACK = "read back from the run directory (nothing regenerated)"
SYNTHESIZED = "synthesized with the current weights"


class RoundDriver(Callback):
    """Runs each round's start and end on every rank.

    Args:
        shard_timeout_minutes: How long a rank waits for the other ranks' shares of a synthesis or an
            evaluation (by polling files, never inside a collective, so long rounds do not hit the process
            group's timeout). A rank that died is reported when it runs out.
    """

    def __init__(self, shard_timeout_minutes: float = DEFAULT_WAIT_MINUTES) -> None:
        super().__init__()
        if shard_timeout_minutes <= 0:
            raise ValueError(f"round_driver.shard_timeout_minutes={shard_timeout_minutes} must be > 0")
        self.shard_timeout_minutes = shard_timeout_minutes
        self.engines: EngineCallback | None = None
        self.data: ReGenesisDataModule | None = None
        self.evaluation: EvaluationCallback | None = None
        self.export: ExportCallback | None = None
        self._trainer = None
        self._restarted: set[int] = set()

    def connect(self, engines: EngineCallback, data: ReGenesisDataModule, evaluation: EvaluationCallback | None = None,
                export: ExportCallback | None = None) -> RoundDriver:
        """Wire the loop: the driver serves the DataModule's rounds and sequences the round ends."""
        self.engines, self.data, self.evaluation, self.export = engines, data, evaluation, export
        data.connect_round_source(self.round_records)
        if evaluation is not None:
            evaluation.connect(engines, data, self.shard_timeout_minutes)
        return self

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.data is None or self.engines is None:
            raise ValueError("RoundDriver is not connected; call RoundDriver.connect(engines, data, ...) before "
                             "Trainer.fit (the regenesis CLI does it)")
        self._trainer = trainer
        # Every task must load before any engine starts (a typo would otherwise surface after a round of work).
        if str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit":
            self.data.questions()
        if self.evaluation is not None:
            self.evaluation.questions()

    # ------------------------------------------------------------------------------ round start
    def round_records(self, k: int) -> tuple[list[dict[str, Any]], str]:
        """Round k's SFT records and where they came from (the DataModule's round source)."""
        trainer = self._trainer
        module = trainer.lightning_module
        layout = RunLayout(self.data.run_dir)
        self.engines.begin_round(k)
        fitting = str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit"
        # Rank 0 decides, so every rank takes the same path (synthesis pushes weights collectively).
        stored = trainer.strategy.broadcast(self._is_stored(layout, k), src=0)
        if stored:
            records, source = load_sft_records(layout.kept(k)), READ_BACK
        elif not fitting:
            raise ValueError(f"round {k} has no data in {layout.round_dir(k)}; validate/test read the rounds a fit "
                             "made: point data.run_dir at that fit's run directory")
        else:
            records, source = self._synthesize(trainer, module, layout, k), SYNTHESIZED
        if fitting:
            self._maybe_restart(trainer, module, k)
        return records, source

    def _is_stored(self, layout: RunLayout, k: int) -> bool:
        """Whether round k is complete for this configuration. A resumed fit always reads its own rounds back
        (the checkpoint's configuration was checked on load; regenerating would use later weights)."""
        try:
            marker = read_json(layout.round_marker(k), "round marker")
        except FileNotFoundError:
            return False
        except ValueError as err:
            log.warning("%s; synthesizing round %d again (the store reuses every stored generation)", err, k)
            return False
        if not layout.kept(k).is_file():
            return False
        if not self.data.resumed and self.data.changes_from(marker.get("config"), marker.get("config_hash"),
                                                            str(layout.round_marker(k))):
            log.info("round %d: %s was made by another configuration; synthesizing again (the store reuses "
                     "whatever generations still apply)", k, layout.round_dir(k))
            return False
        return True

    def _synthesize(self, trainer, module, layout: RunLayout, k: int) -> list[dict[str, Any]]:
        """Every rank synthesizes its shard with the current weights; rank 0 merges and marks the round."""
        shard = self.engines.shard(trainer)
        with self.engines.serving(module, purpose=f"synthesis round {k}") as engine:
            # rank 0's engine names the round on every rank; its token keeps other runs' parts out of this one
            served, token = trainer.strategy.broadcast((served_by(engine), uuid.uuid4().hex), src=0)
            if shard.world > 1:
                log.info("round %d: rank %d synthesizes %d of %d questions", k, shard.rank,
                         len(shard.take(self.data.questions())), len(self.data.questions()))
            try:
                result = synthesize_to_store(engine, self.data.questions(), self.data.synthesis, round=k,
                                             run_dir=self.data.run_dir, flush_every=self.data.flush_every,
                                             require_kept=True, model=self.engines.model_name(module),
                                             adapter=self.engines.served_adapter, shard=shard,
                                             wait_minutes=self.shard_timeout_minutes, served=served,
                                             run_token=token, say=log.info)
            except EmptyRoundError as err:
                raise EmptyRoundError(f"{err} (files in {layout.round_dir(k)})") from None
            if trainer.is_global_zero:
                config = self.data.run_config()
                write_json(layout.round_marker(k), {
                    "round": k, "config_hash": config_hash(config), "config": config,
                    "weights_id": served["weights_id"], "adapter": self.engines.served_adapter,
                    "kept": len(result.kept), "processes": shard.world, "store": result.stats.get("store", {})})
        trainer.strategy.barrier("regenesis-round-data")  # short: every rank already waited for the merge
        return load_sft_records(layout.kept(k))

    def _maybe_restart(self, trainer, module, k: int) -> None:
        """At the start of round k > 0 (not when resuming inside it), return the model to the base weights."""
        if not self.data.restart_from_base or k == 0 or k in self._restarted:
            return
        self._restarted.add(k)
        if not self.data.schedule.starts_round(trainer.current_epoch):
            return  # resumed mid-round: the checkpoint already holds this round's partly trained weights
        log.info("round %d: restart_from_base: training starts again from the base model", k)
        module.reset_to_base(seed=self.data.seed + k)

    # ------------------------------------------------------------------------------ round end
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.data.schedule.ends_round(trainer.current_epoch):
            return
        k = self.data.schedule.round_of(trainer.current_epoch)
        summary = self.evaluation.evaluate_round(trainer, pl_module, k) if self.evaluation is not None else None
        if self.export is not None:
            self.export.export_round(trainer, pl_module, k, evaluation=summary)
        self.engines.end_round(trainer, k)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Tell the other ranks (they may be waiting for this rank's files) why this one stopped."""
        if trainer.world_size > 1 and self.data is not None:
            mark_failed(RunLayout(self.data.run_dir).failures, trainer.global_rank, exception)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.export is not None and self.evaluation is not None:
            self.export.write_best(trainer, self.evaluation.best_round)
        if self.evaluation is not None:
            self.evaluation.write_run_report(trainer)
