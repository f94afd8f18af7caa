"""In-domain and out-of-domain evaluation during a fit, through the run's generation engines.

The base model is evaluated once before training (so the report has a before/after table), then the model
after every round (when the loop's owner, ``RoundDriver``, asks), and optionally every N optimizer steps.
Each evaluation pushes the current weights into the engines (``EngineCallback``); every rank answers its
share of the questions (greedy zero-shot chain of thought) through the run's evaluation store, so a kill
during an evaluation regenerates nothing already answered; rank 0 merges the shares, logs
``eval/<task>/accuracy`` and ``eval/<task>/parse_rate`` to the Lightning loggers and writes
``<run_dir>/eval/<name>.json`` with the per-question records beside it. The best round is the one with the
highest mean in-domain accuracy. At the end of the fit it writes the run report.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from regenesis_pl.atomic import write_json, write_jsonl
from regenesis_pl.callbacks.engine import EngineCallback
from regenesis_pl.data.datamodule import ReGenesisDataModule
from regenesis_pl.hashing import digest
from regenesis_pl.layout import RunLayout, round_name
from regenesis_pl.round.synthesize import served_by
from regenesis_pl.sharding import DEFAULT_WAIT_MINUTES, ShardedJob
from regenesis_pl.tasks.registry import TaskConfig

log = logging.getLogger(__name__)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class EvaluationCallback(Callback):
    """Evaluates accuracy and parse rate per task: base model, after every round, optionally every N steps.

    Args:
        in_domain: Test tasks of the training domain (e.g. the training task's test split); their mean
            accuracy picks the best round.
        ood: Out-of-domain tasks (reported separately).
        max_tokens: Generation limit per answer (greedy).
        every_n_steps: Also evaluate every this many optimizer steps (None: only at round ends).
        evaluate_base: Evaluate the base model before training starts (skipped when resuming).
        run_dir: Run directory; results go to ``<run_dir>/eval/``.
        write_report: Write ``<run_dir>/report.md`` and its plots when the fit ends.
        patience: Eval gating: stop the fit once this many consecutive rounds have not raised the mean
            in-domain accuracy above the best so far (the base model's counts when it was evaluated); the
            best round's export stays the one to use. None runs every round.
    """

    def __init__(self, in_domain: list[TaskConfig], ood: list[TaskConfig] | None = None, max_tokens: int = 512,
                 every_n_steps: int | None = None, evaluate_base: bool = True, run_dir: str = "runs/fit",
                 write_report: bool = True, patience: int | None = None) -> None:
        super().__init__()
        if not in_domain:
            raise ValueError("evaluation.in_domain: give at least one task, e.g. the training task's test split")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"evaluation.every_n_steps={every_n_steps} must be >= 1 or null")
        if max_tokens < 1:
            raise ValueError(f"evaluation.max_tokens={max_tokens} must be >= 1")
        if patience is not None and patience < 1:
            raise ValueError(f"evaluation.patience={patience} must be >= 1 or null")
        self.layout = RunLayout(run_dir)
        self.engines: EngineCallback | None = None
        self.data: ReGenesisDataModule | None = None
        self.wait_minutes = DEFAULT_WAIT_MINUTES
        self.in_domain = list(in_domain)
        self.ood = list(ood or [])
        self.max_tokens = max_tokens
        self.every_n_steps = every_n_steps
        self.evaluate_base = evaluate_base
        self.run_dir = Path(run_dir)
        self.write_report = write_report
        self.patience = patience
        self.rounds_without_gain = 0
        self.stopped_after: int | None = None
        self._questions: list | None = None
        self._kinds: dict[str, str] = {}
        self.history: list[dict[str, Any]] = []
        self.best_round: int | None = None
        self.best_score: float | None = None
        self._evaluated_stage: str | None = None

    # ------------------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_round": self.best_round, "best_score": self.best_score,
                "rounds_without_gain": self.rounds_without_gain, "stopped_after": self.stopped_after}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.best_round = state_dict.get("best_round")
        self.best_score = state_dict.get("best_score")
        self.rounds_without_gain = state_dict.get("rounds_without_gain", 0)
        self.stopped_after = state_dict.get("stopped_after")

    # ------------------------------------------------------------------------------ questions
    def questions(self) -> list:
        """All evaluation questions (in-domain first), loaded once; task names must not repeat across groups."""
        if self._questions is None:
            from regenesis_pl.tasks.registry import load_questions

            questions, kinds = [], {}
            for group, configs in (("in_domain", self.in_domain), ("ood", self.ood)):
                for config in configs:
                    loaded = load_questions(config)
                    if not loaded:
                        raise ValueError(f"evaluation.{group}: task {config.name!r} gave no questions; check "
                                         "name, split and limit")
                    for task in {q.task for q in loaded}:
                        if kinds.setdefault(task, group) != group:
                            raise ValueError(f"evaluation: task {task!r} is listed both in-domain and OOD; "
                                             "list it once")
                    questions += loaded
            self._questions, self._kinds = questions, kinds
        return self._questions

    def connect(self, engines: EngineCallback, data: ReGenesisDataModule,
                wait_minutes: float = DEFAULT_WAIT_MINUTES) -> None:
        """The engines to evaluate with and the data module whose rounds it follows (the fit CLI connects them)."""
        self.engines, self.data, self.wait_minutes = engines, data, wait_minutes

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.engines is None or self.data is None:
            raise ValueError("EvaluationCallback is not connected to the engines and the data; build the fit with "
                             "the regenesis CLI, or call RoundDriver.connect(...) before Trainer.fit")

    # ------------------------------------------------------------------------------ evaluating
    def evaluate(self, trainer, pl_module, name: str, round_k: int, kind: str) -> dict[str, Any] | None:
        """Evaluate the current weights on every rank; rank 0 writes ``eval/<name>.json``, logs and returns the
        summary (other ranks return None once every share is written)."""
        from regenesis_pl.evaluation import evaluate_questions
        from regenesis_pl.round.cached_engine import through_store
        from regenesis_pl.round.store import prepare_store_dir

        questions = self.questions()
        shard = self.engines.shard(trainer)
        start, start_wall = time.perf_counter(), time.time()
        with self.engines.serving(pl_module, purpose=f"eval {name}", round_k=round_k) as engine:
            # rank 0's engine names the weights on every rank; its token keeps other runs' parts out of this one
            served, token = trainer.strategy.broadcast((served_by(engine), uuid.uuid4().hex), src=0)
            weights_id = served["weights_id"]
            tag = digest([served, self.max_tokens, [q.to_dict() for q in questions], shard.world, token], 12)
            # rank 0 waits for every part to merge them, the others for every part too: all leave the block together
            job = ShardedJob(shard, part=lambda rank: self.layout.evaluation_shard(name, tag, rank),
                             what=f"eval {name}", failures=self.layout.failures, wait_minutes=self.wait_minutes)
            store_dir = None
            if engine is not None:  # one store for every evaluation of the run: keys hold the weights' content
                meta = {"purpose": "fit evaluation", "backend": served["backend"], "dtype": served["dtype"]}
                store_dir = prepare_store_dir(self.layout.eval_dir, meta, say=log.info)
            with through_store(engine, store_dir, self.data.flush_every, shard.name) as cached:
                result = evaluate_questions(cached, questions, max_tokens=self.max_tokens, progress=f"eval {name}",
                                            job=job, since=start_wall)
            store = cached.stats() if cached is not None else {}
        if result is None:
            return None
        seconds = time.perf_counter() - start
        in_domain = [t for t, k in self._kinds.items() if k == "in_domain"]
        ood = [t for t, k in self._kinds.items() if k == "ood"]
        per_task = result.to_json()["per_task"]
        summary = {
            "name": name, "kind": kind, "round": round_k, "step": trainer.global_step, "epoch": trainer.current_epoch,
            "in_domain": in_domain, "ood": ood,
            "in_domain_mean": _mean([per_task[t]["accuracy"] for t in in_domain if t in per_task]),
            "ood_mean": _mean([per_task[t]["accuracy"] for t in ood if t in per_task]),
            "per_task": per_task, "adapter": self.engines.served_adapter, "weights_id": weights_id,
            "max_tokens": self.max_tokens, "seconds": round(seconds, 2), "processes": shard.world,
            "store": {"hits": store.get("hits", 0), "misses": store.get("misses", 0)},
        }
        write_jsonl(self.layout.evaluation_records(name), result.records)
        write_json(self.layout.evaluation(name), summary)
        self._log(trainer, summary)
        self.history.append({k: summary[k] for k in ("name", "kind", "round", "step", "in_domain_mean", "ood_mean")})
        table = ", ".join(f"{t} {s['accuracy']:.1%} (parsed {s['parse_rate']:.0%})" for t, s in per_task.items())
        log.info("eval %s (step %d): %s", name, trainer.global_step, table)
        return summary

    def evaluate_round(self, trainer, pl_module, k: int) -> dict[str, Any] | None:
        """Round k's evaluation (the loop's owner calls it at the round's end): best round, patience stop."""
        summary = self.evaluate(trainer, pl_module, round_name(k), round_k=k, kind="round")
        if summary is not None and summary["in_domain_mean"] is not None:
            self.record_round(trainer, k, summary["in_domain_mean"])
        if self.patience is not None:  # the decision is rank 0's (it merges); every rank must stop with it
            trainer.should_stop = bool(trainer.strategy.broadcast(trainer.should_stop, src=0))
        return summary

    def _log(self, trainer, summary: dict[str, Any]) -> None:
        metrics = {"eval/round": float(summary["round"])}
        for task, score in summary["per_task"].items():
            metrics[f"eval/{task}/accuracy"] = score["accuracy"]
            metrics[f"eval/{task}/parse_rate"] = score["parse_rate"]
        for key in ("in_domain_mean", "ood_mean"):
            if summary[key] is not None:
                metrics[f"eval/{key}"] = summary[key]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    # ------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, pl_module) -> None:
        done = any(h["kind"] == "base" for h in self.history)
        if self.evaluate_base and not done and trainer.ckpt_path is None and trainer.global_step == 0:
            self.evaluate(trainer, pl_module, "base", round_k=-1, kind="base")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps:
            return
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if last and self.data.schedule.ends_round(trainer.current_epoch):
            return  # the round-end evaluation follows at once
        k = self.data.current_round
        self.evaluate(trainer, pl_module, round_name(k, step), round_k=k, kind="periodic")

    def record_round(self, trainer, k: int, score: float) -> None:
        """Track the best round and, with ``patience``, stop the fit after too many rounds without a gain."""
        base = next((h["in_domain_mean"] for h in self.history if h.get("kind") == "base"), None)
        bar = max((s for s in (self.best_score, base) if s is not None), default=None)
        if self.best_score is None or score > self.best_score:
            self.best_round, self.best_score = k, score
        self.rounds_without_gain = 0 if bar is None or score > bar else self.rounds_without_gain + 1
        log.info("round %d: mean in-domain accuracy %.1f%% (best: round %d, %.1f%%)", k, 100 * score,
                 self.best_round, 100 * self.best_score)
        if self.patience is not None and self.rounds_without_gain >= self.patience:
            self.stopped_after = k
            trainer.should_stop = True
            if trainer.is_global_zero:
                decision = {"after_round": k, "patience": self.patience, "rounds_without_gain": self.rounds_without_gain,
                            "bar": bar, "best_round": self.best_round, "best_score": self.best_score}
                write_json(self.layout.stop_file, decision)
            log.info("round %d: %d round(s) without a gain over %.1f%% (patience %d): stopping; use round %d's "
                     "export", k, self.rounds_without_gain, 100 * bar, self.patience, self.best_round)

    # `regenesis validate|test`: accuracy of the loaded weights, after the loss loop (or at teardown when the
    # loop had no batches, e.g. val_fraction=0, and Lightning skipped its hooks).
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._evaluate_loaded(trainer, pl_module, "validate")

    def on_test_end(self, trainer, pl_module) -> None:
        self._evaluate_loaded(trainer, pl_module, "test")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        stage = str(getattr(stage, "value", stage))
        if stage in ("validate", "test") and self._evaluated_stage != stage:
            self._evaluate_loaded(trainer, pl_module, stage)
        self._evaluated_stage = None

    def _evaluate_loaded(self, trainer, pl_module, stage: str) -> None:
        self._evaluated_stage = stage
        self.evaluate(trainer, pl_module, stage, round_k=self.data.current_round, kind=stage)

    def write_run_report(self, trainer) -> None:
        """Rank 0: ``report.md`` and its plots from the run's files (the loop's owner calls it at the fit's end)."""
        if self.write_report and trainer.is_global_zero:
            from regenesis_pl.report import write_report

            path = write_report(self.run_dir)
            log.info("report written to %s", path)
