"""``regenesis fit|validate|test``: the self-improvement loop configured by one YAML file (LightningCLI).

A fit config has these sections (every key is checked against the live class signatures; an unknown key
is named in LightningCLI's error):

    seed_everything: 0
    model:        SFTModule           (base model, mode full|lora|qlora, optimizer settings)
    data:         ReGenesisDataModule (training task, synthesis, rounds, epochs_per_round, run_dir, ...)
    generation:   EngineCallback      (the engine settings under `engine:`, an EngineConfig)
    evaluation:   EvaluationCallback  (in-domain and OOD tasks, max_tokens, every_n_steps, patience)
    export:       ExportCallback      (merged export, frozen-weights audit)
    round_driver: RoundDriver         (the owner of each round's start and end; shard_timeout_minutes)
    checkpoint:   ModelCheckpoint     (defaults: <run_dir>/checkpoints, last.ckpt at every epoch end)
    trainer:      Trainer             (accelerator, precision, strategy, ...; logger default: CSV in <run_dir>/logs)

Said once, linked everywhere: ``trainer.max_epochs = data.rounds * data.epochs_per_round``, ``model.base_model``
is the model the engines serve, and ``data.run_dir`` is the run directory of every callback, the checkpoints and the logs.
The CLI then connects the callbacks to each other and to the DataModule (``RoundDriver.connect``).

Resume after any interruption with ``--ckpt_path last``: the stored rounds are read back (nothing is
regenerated), the adapter weights come from the checkpoint (the engine serves them from saved folders, as an
adapter or folded into a copy of the base, never into the base itself), and a checkpoint written by another
configuration is refused with the differing settings.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import warnings
import zipfile
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from regenesis_pl.callbacks.engine import EngineCallback
from regenesis_pl.callbacks.evaluation import EvaluationCallback
from regenesis_pl.callbacks.export import ExportCallback
from regenesis_pl.callbacks.round_driver import RoundDriver
from regenesis_pl.config_renames import renamed_key_in_config, renamed_key_in_options
from regenesis_pl.console import quiet_third_party, refusal_line, show_progress_messages, verbose
from regenesis_pl.data.datamodule import ReGenesisDataModule
from regenesis_pl.engines.factory import EngineConfig
from regenesis_pl.layout import RunLayout
from regenesis_pl.model.module import SFTModule
from regenesis_pl.run_lock import claimed

TRAINER_DEFAULTS = {"num_sanity_val_steps": 0, "log_every_n_steps": 1, "reload_dataloaders_every_n_epochs": 1}
CHECKPOINT_DEFAULTS = {"checkpoint.save_last": True, "checkpoint.save_on_train_epoch_end": True,
                       "checkpoint.enable_version_counter": False, "checkpoint.filename": "{epoch}-{step}"}


def _max_epochs(rounds: int, epochs_per_round: int) -> int:
    return int(rounds) * int(epochs_per_round)


def _checkpoint_dir(run_dir: str) -> str:
    return str(RunLayout(run_dir).checkpoints)


# Keys computed from others (jsonargparse would silently replace a value a config file gives them).
LINKED = {"trainer.max_epochs": "data.rounds x data.epochs_per_round", "generation.model": "model.base_model",
          "generation.run_dir": "data.run_dir", "evaluation.run_dir": "data.run_dir",
          "export.run_dir": "data.run_dir", "trainer.default_root_dir": "data.run_dir",
          "checkpoint.dirpath": "data.run_dir"}


class ReGenesisCLI(LightningCLI):
    """LightningCLI with the engine, evaluation, export and checkpoint callbacks as config sections, and the
    round bookkeeping linked into the Trainer."""

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        _refuse_moved_keys(args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        for source in config.get("config") or []:
            raw = yaml.safe_load(source.read_text()) or {}
            for key, origin in LINKED.items():
                section, _, name = key.partition(".")
                if isinstance(raw.get(section), dict) and name in raw[section]:
                    (self._subcommand_parsers[subcommand] if subcommand else parser).error(
                        f"{source}: {key} is computed from {origin}; remove it from the config")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # RoundDriver sequences each round's end (evaluate, export, engine totals); Lightning runs the checkpoint
        # callback last, so the checkpoint holds the round's evaluation state. The engines stay open until the
        # generation callback's teardown, after the evaluation callback's (validate/test evaluate there).
        parser.add_lightning_class_args(EvaluationCallback, "evaluation")
        parser.add_lightning_class_args(ExportCallback, "export")
        parser.add_lightning_class_args(EngineCallback, "generation")
        parser.add_lightning_class_args(RoundDriver, "round_driver")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.link_arguments(("data.rounds", "data.epochs_per_round"), "trainer.max_epochs",
                              compute_fn=_max_epochs)
        parser.link_arguments("model.base_model", "generation.model")
        for target in ("generation.run_dir", "evaluation.run_dir", "export.run_dir", "trainer.default_root_dir"):
            parser.link_arguments("data.run_dir", target)
        parser.link_arguments("data.run_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)


    def _run_subcommand(self, subcommand: str) -> None:
        # Every class is built by now but nothing heavy (the engines start in setup, the model in configure_model):
        # a run directory another job holds is refused here in one line, and held until the subcommand ends.
        with claimed(self._get(self.config_init, "data").run_dir):
            super()._run_subcommand(subcommand)

    def before_fit(self) -> None:
        """``--ckpt_path last`` before any checkpoint exists starts fresh: say so in one line (Lightning's own
        warning would suggest a setting that is already on)."""
        RunLayout(self._get(self.config_init, "data").run_dir).create()
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            folder = Path(self._get(self.config_init, "checkpoint").dirpath)
            if not any(folder.glob("*.ckpt")):
                logging.getLogger("regenesis_pl.cli").info(
                    "--ckpt_path last: no checkpoint in %s yet, so this fit starts fresh (rounds already "
                    "synthesized in the run directory are read back, not generated again)", folder)
                config["ckpt_path"] = None
                return
            _check_checkpoint_file(folder / "last.ckpt")

    def _parse_ckpt_path(self) -> None:
        # Lightning reads an explicit --ckpt_path file here (for its hyperparameters), before any hook of ours runs
        subcommand = self.config.get("subcommand")
        if subcommand:
            _check_checkpoint_file(self.config[subcommand].get("ckpt_path"))
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        """The Trainer, logging to CSV files under ``<run_dir>/logs`` unless the config names a logger, with the
        loop's callbacks connected to each other and to the DataModule."""
        get = lambda key: self._get(self.config_init, key)
        get("round_driver").connect(get("generation"), self.datamodule, get("evaluation"), get("export"))
        trainer_config = self._get(self.config_init, "trainer", default={}) or {}
        if trainer_config.get("logger") in (None, True) and "logger" not in kwargs:
            from lightning.pytorch.loggers import CSVLogger

            kwargs["logger"] = CSVLogger(save_dir=str(self._get(self.config_init, "data").run_dir), name="logs")
        return super().instantiate_trainer(**kwargs)


ENGINE_KEYS = tuple(EngineConfig.__dataclass_fields__)


def _check_checkpoint_file(path) -> None:
    """A checkpoint cut short (a kill or a full disk during its write) is named in one line, not a zip error."""
    if path and Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise ValueError(f"checkpoint {path} is truncated or not a torch checkpoint (no zip directory at its end); "
                         "delete it and resume from an older one in the same folder, or drop --ckpt_path")


def _refuse_moved_keys(args) -> None:
    """One line for a config or an option written before a key was renamed (``config_renames.py``) or before
    the engine settings became one schema (``generation.engine``)."""
    if args is None:  # the command line itself (run_fit_cli passes None then, as LightningCLI wants)
        args = sys.argv[1:]
    if isinstance(args, dict):  # a whole configuration, as a study composes one: the caller names where
        message = renamed_key_in_config(args)
        if message:
            raise ValueError(message)
        return
    args = list(args)
    command = args[0] if args and args[0] in ("fit", "validate", "test") else "fit"
    message = renamed_key_in_options(args, command)
    if message:
        print(f"regenesis {command}: {message}", file=sys.stderr)
        raise SystemExit(2)
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    paths += [a.partition("=")[2] for a in args if a.startswith("--config=")]
    for path in paths:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # the parser reports a missing or broken file in its own words
        message = renamed_key_in_config(raw) if isinstance(raw, dict) else None
        if message:
            print(f"regenesis: {path}: {message}", file=sys.stderr)
            raise SystemExit(2)
        moved = sorted(set(raw.get("generation") or {}) & set(ENGINE_KEYS)) if isinstance(raw, dict) else []
        if moved:
            print(f"regenesis: {path}: generation.{moved[0]} moved to generation.engine.{moved[0]} (the engine "
                  "settings are one EngineConfig shared by fit, evaluate and synthesize); nest "
                  f"{', '.join(moved)} under `generation: engine:`", file=sys.stderr)
            raise SystemExit(2)


class _ConfigCheck(ReGenesisCLI):
    """Parses and type-checks a config without building anything (used by ``check_fit_config``)."""

    def instantiate_classes(self) -> None:
        return None


def _cli_kwargs() -> dict:
    # Lightning's model summary table prints straight to the console; SFTModule says it in one line unless verbose
    defaults = {**TRAINER_DEFAULTS, "enable_model_summary": verbose()}
    return {"model_class": SFTModule, "datamodule_class": ReGenesisDataModule, "trainer_defaults": defaults,
            "auto_configure_optimizers": False, "save_config_kwargs": {"overwrite": True}}


def check_fit_config(args: list[str] | dict, where: str | None = None):
    """Parse fit arguments (e.g. ``["--config", "configs/smoke_cpu.yaml"]``) or a whole fit configuration (a
    dict, as a study composes one) against the live classes and return the namespace; nothing is instantiated.

    Bad keys or types exit with LightningCLI's error, or, with ``where``, raise a one-line ValueError that
    starts with ``where``."""
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to ..." once per check
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    # a deep copy of a dict: the parser rewrites nested entries in place (class paths, defaults)
    parsed = copy.deepcopy(args) if isinstance(args, dict) else list(args)
    try:
        with warnings.catch_warnings():  # LightningCLI warns when a process's own argv is also non-empty
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return _ConfigCheck(**_cli_kwargs(), args=parsed, run=False,
                                parser_kwargs={"exit_on_error": where is None}).config
    except (argparse.ArgumentError, ValueError, TypeError) as err:
        if where is None:
            raise
        raise ValueError(f"{where}: {refusal_line(err)}") from None
    finally:
        seed_log.setLevel(level)


def check_study(fit: dict, arms: list, seeds: list[int] | None, study_dir: str) -> None:
    """Parse every arm's fit configuration of a study (``regenesis study``) before hours of compute start; the
    first bad key or value is a one-line ValueError naming the arm. Seeds change only seed values, so one
    configuration per arm is checked."""
    from regenesis_pl.study.plan import plan_runs

    checked = set()
    for run in plan_runs(fit, arms, seeds, study_dir):
        if run.arm not in checked:
            check_fit_config(run.config, f"study arm {run.arm!r}")
            checked.add(run.arm)


def run_fit_cli(args: list[str] | None = None) -> ReGenesisCLI:
    """Run ``fit``, ``validate`` or ``test`` (first element of ``args``; default: ``sys.argv[1:]``).

    Errors from bad input (a mismatched checkpoint, an empty round, a missing file) end the process with
    exit code 2 and one line on stderr.
    """
    from regenesis_pl.round.synthesize import EmptyRoundError

    args = list(sys.argv[1:] if args is None else args)
    show_progress_messages()
    quiet_third_party()
    try:
        # args=None when they are the command line itself (Lightning warns when given both)
        return ReGenesisCLI(**_cli_kwargs(), args=None if args == sys.argv[1:] else args,
                            parser_kwargs={"exit_on_error": False})
    except (argparse.ArgumentError, ValueError, OSError, EmptyRoundError) as err:
        # ArgumentError: a config key or value the live classes do not accept; OSError: a missing file, a full disk
        name = " ".join(["regenesis", *args[:1]])
        hint = f"; see `{name} --help`" if isinstance(err, argparse.ArgumentError) else ""
        print(f"{name}: {refusal_line(err)}{hint}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run_fit_cli()
