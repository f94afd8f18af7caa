"""The LightningDataModule of the self-improvement loop: the settings of each round's data, and its batches.

Rounds map onto epochs (``regenesis_pl.round_schedule``): the Trainer runs ``rounds * epochs_per_round`` epochs and
asks for its dataloaders every epoch (``reload_dataloaders_every_n_epochs=1``); ``train_dataloader()`` serves
round ``k = current_epoch // epochs_per_round``. (Reloading only every ``epochs_per_round`` epochs would drift
after a resume inside a round: Lightning counts that interval from the last reload, which a checkpoint does
not keep.) When a round starts, its SFT records come from the round source that the loop's owner
(``callbacks.rounds.RoundDriver``) connected: read back from the run directory, or synthesized by every rank
with the current weights. This module only tokenizes them, holds out the validation share and batches them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from regenesis_pl.data.sft import (
    LengthGroupedBatchSampler,
    SFTCollator,
    SFTDataset,
    encode_conversations,
    split_train_val,
)
from regenesis_pl.hashing import config_differences, config_hash, has_dotted_key, plain
from regenesis_pl.method.synthesis import SynthesisConfig
from regenesis_pl.round_schedule import RoundSchedule
from regenesis_pl.tasks.registry import TaskConfig

log = logging.getLogger(__name__)

RoundSource = Callable[[int], tuple[list[dict[str, Any]], str]]  # round k -> (SFT records, where they came from)


class ReGenesisDataModule(LightningDataModule):
    """Per-round SFT data for the self-improvement loop, synthesized by the model being trained.

    Args:
        train_task: The training questions, e.g. ``{name: arithmetic, split: train, limit: 64}``; every round
            uses all of them (with new seeds).
        synthesis: Method (regenesis, star, lmsi, gt), sampling, hint and filter settings of each round.
        rounds: Self-improvement rounds; the Trainer runs ``rounds * epochs_per_round`` epochs.
        epochs_per_round: Training epochs over each round's data.
        restart_from_base: Train each round from the base model (STaR/ReST style) instead of continuing
            from the previous round's weights; the round's data is still made by the previous round's model.
        max_length: Token limit of one SFT record (prompt + path).
        overflow: What to do with records longer than ``max_length``: "drop" or "truncate" (counted either way).
        batch_size: Records per training batch (per process).
        val_fraction: Share of a round's questions whose paths are held out for the validation loss.
        num_workers: DataLoader worker processes (0 = load in the training process).
        run_dir: Run directory (``regenesis_pl.layout``); round k's synthesis lives in ``<run_dir>/round-<k>/``.
        flush_every: At most this many generation requests per engine call of an evaluation or of a stage-major
            round (``synthesis.order: stage``); None (default): one call. A pipelined round streams its
            requests. Each completion is stored the moment it finishes either way.
        seed: Seed of the batch order and of the held-out split.
    """

    def __init__(self, train_task: TaskConfig, synthesis: SynthesisConfig | None = None, rounds: int = 1,
                 epochs_per_round: int = 1, restart_from_base: bool = False, max_length: int = 1024,
                 overflow: Literal["drop", "truncate"] = "drop", batch_size: int = 4, val_fraction: float = 0.1,
                 num_workers: int = 0, run_dir: str = "runs/fit", flush_every: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.schedule = RoundSchedule(rounds, epochs_per_round)
        if batch_size < 1 or max_length < 8:
            raise ValueError(f"data: batch_size={batch_size} must be >= 1 and max_length={max_length} >= 8")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data: val_fraction={val_fraction} must be in [0, 1)")
        if overflow not in ("drop", "truncate"):
            raise ValueError(f"data: overflow={overflow!r}; use 'drop' or 'truncate'")
        if flush_every is not None and flush_every < 1:
            raise ValueError(f"data: flush_every={flush_every} must be >= 1")
        self.train_task = train_task
        self.synthesis = synthesis or SynthesisConfig()
        self.rounds = rounds
        self.epochs_per_round = epochs_per_round
        self.restart_from_base = restart_from_base
        self.max_length = max_length
        self.overflow = overflow
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.run_dir = Path(run_dir)
        self.flush_every = flush_every
        self.seed = seed
        self.resumed = False
        self._source: RoundSource | None = None
        self._questions = None
        self._round: int | None = None
        self._train: SFTDataset | None = None
        self._val: SFTDataset | None = None
        self._checkpoint_epoch: int | None = None
        self.round_info: dict[int, dict[str, Any]] = {}

    def connect_round_source(self, source: RoundSource) -> None:
        """Where each round's records come from (the loop's owner connects itself before fitting)."""
        self._source = source

    # ------------------------------------------------------------------------------ configuration identity
    def run_config(self) -> dict[str, Any]:
        """What this run computes: the data settings (minus resumable ones) and the module's hyperparameters."""
        data = {"train_task": self.train_task, "synthesis": self.synthesis, "epochs_per_round": self.epochs_per_round,
                "restart_from_base": self.restart_from_base, "max_length": self.max_length,
                "overflow": self.overflow, "batch_size": self.batch_size, "val_fraction": self.val_fraction,
                "seed": self.seed}
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        hparams = dict(getattr(module, "hparams", {}) or {})
        return plain({"data": data, "model": {"class": type(module).__name__ if module else None, **hparams}})

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the configuration hash (checked on resume) and the rounds made so far."""
        config = self.run_config()
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return {"config_hash": config_hash(config), "config": config, "round_info": self.round_info, "epoch": epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """When fitting, refuse a checkpoint written by another configuration (one line naming the differing
        settings); validate/test only warn."""
        changed = self.changes_from(state_dict.get("config"), state_dict.get("config_hash"), "checkpoint")
        fitting = self.trainer is None or self.trainer.state.fn == "fit"
        if changed and not fitting:  # validate/test only read the weights: say it, do not refuse
            log.warning("checkpoint was written by another configuration (differs in: %s)", ", ".join(changed[:8]))
        elif changed:
            raise ValueError(f"checkpoint was written by another configuration (differs in: "
                             f"{', '.join(changed[:8])}); resume with the config it was made with, or start a new "
                             "run_dir without --ckpt_path")
        self.resumed = True
        self._checkpoint_epoch = state_dict.get("epoch")
        self.round_info = {int(k): v for k, v in state_dict.get("round_info", {}).items()}

    def changes_from(self, old: dict | None, old_hash: str | None, what: str) -> list[str]:
        """Settings that differ between a saved configuration and this one. Settings the saved one lacks (added
        by a newer regenesis_pl) are taken at their current values, with a warning."""
        current = self.run_config()
        if old_hash is None or old_hash == config_hash(current):
            return []
        if not old:
            return ["unknown settings (no configuration saved beside the hash)"]
        changed = config_differences(old, current)
        added = [key for key in changed if not has_dotted_key(old, key)]
        if not changed or len(added) < len(changed):
            return [key for key in changed if key not in added] or ["unknown settings"]
        log.warning("%s predates the settings %s (a newer regenesis_pl); using their current values", what,
                    ", ".join(added))
        return []

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None and self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(f"trainer.reload_dataloaders_every_n_epochs="
                             f"{self.trainer.reload_dataloaders_every_n_epochs}: the ReGenesis DataModule needs 1 "
                             "(it serves each round's data from its cache; rounds are set by data.epochs_per_round)")
        if stage == "fit" and self.trainer is not None and self.val_fraction == 0:
            # nothing is held out: no validation loop at all (an empty loader would only make Lightning warn)
            self.trainer.limit_val_batches = 0

    # ------------------------------------------------------------------------------ rounds
    @property
    def current_round(self) -> int:
        """Round of the Trainer's current epoch (0 before fitting); validate/test: the round of the loaded
        checkpoint (their loops do not restore the epoch)."""
        if self.trainer is None:
            return 0
        if self.trainer.state.fn != "fit" and self._checkpoint_epoch is not None:
            return min(self.schedule.round_of(self._checkpoint_epoch), self.rounds - 1)
        return self.schedule.round_of(self.trainer.current_epoch)

    def questions(self):
        """The training questions (loaded once)."""
        if self._questions is None:
            from regenesis_pl.tasks.registry import load_questions

            self._questions = load_questions(self.train_task)
            if not self._questions:
                raise ValueError(f"data.train_task {self.train_task.name!r} gave no questions; check name, split "
                                 "and limit")
        return self._questions

    def _prepare_round(self, k: int) -> None:
        if self._round == k:
            return
        if self._source is None:
            raise ValueError("ReGenesisDataModule: no round source is connected; build the fit with the regenesis "
                             "CLI, or call RoundDriver.connect(...) before Trainer.fit")
        records, source = self._source(k)
        tokenizer = self.trainer.lightning_module.tokenizer
        train_recs, val_recs = split_train_val(records, self.val_fraction, seed=self.seed + k,
                                               key=lambda r: r["question_id"])
        train = encode_conversations(tokenizer, [r["messages"] for r in train_recs], self.max_length, self.overflow)
        val = encode_conversations(tokenizer, [r["messages"] for r in val_recs], self.max_length, self.overflow)
        if not train.records:
            raise ValueError(f"round {k}: none of the {len(train_recs)} training paths fits max_length="
                             f"{self.max_length} tokens ({train.dropped} dropped); raise data.max_length or use "
                             "data.overflow='truncate'")
        self._train, self._val = SFTDataset(train.records), SFTDataset(val.records) if val.records else None
        self._round = k
        info = {"round": k, "source": source, "paths": len(records), "train": len(train.records),
                "val": len(val.records), "dropped_too_long": train.dropped + val.dropped,
                "truncated": train.truncated + val.truncated}
        self.round_info[k] = info
        log.info("round %d: %d kept paths %s; %d train / %d validation records (%d too long dropped, %d "
                 "truncated)", k, len(records), source, info["train"], info["val"], info["dropped_too_long"],
                 info["truncated"])

    # ------------------------------------------------------------------------------ dataloaders
    def _loader(self, dataset: SFTDataset, shuffle: bool, epoch_seed: int) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = LengthGroupedBatchSampler(dataset.lengths, self.batch_size, shuffle=shuffle, seed=epoch_seed,
                                            num_replicas=replicas, rank=rank)
        pad_id = self.trainer.lightning_module.tokenizer.pad_token_id
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=SFTCollator(pad_id),
                          num_workers=self.num_workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        """Batches of the current round's training records (length-grouped, seeded by the epoch)."""
        self.schedule.check_epoch(self.trainer.current_epoch)
        self._prepare_round(self.current_round)
        return self._loader(self._train, shuffle=True, epoch_seed=self.seed)

    def val_dataloader(self):
        """The current round's held-out records (validation loss); an empty list when nothing is held out."""
        self._prepare_round(min(self.current_round, self.rounds - 1))
        if self._val is None:
            return []
        return self._loader(self._val, shuffle=False, epoch_seed=self.seed)

    def test_dataloader(self):
        """Same held-out records as ``val_dataloader`` (``regenesis test`` reports their loss beside the task
        accuracy that ``EvaluationCallback`` measures)."""
        return self.val_dataloader()
