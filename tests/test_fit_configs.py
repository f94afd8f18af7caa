"""Every YAML in configs/ parses against the live signatures (nothing is built, no model is loaded).

File name convention (which command a config is for):
    configs/eval_*.yaml    -> `regenesis evaluate --config ...`   (regenesis_pl.cli.build_parser)
    configs/synth_*.yaml   -> `regenesis synthesize --config ...` (regenesis_pl.cli.build_parser)
    configs/study_*.yaml   -> `regenesis study --config ...`      (every arm's fit configuration checked too)
    any other *.yaml       -> `regenesis fit|validate|test --config ...` (LightningCLI, regenesis_pl.lightning_cli)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from regenesis_pl.lightning_cli import check_fit_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SUBCOMMAND_PREFIXES = {"eval_": "evaluate", "synth_": "synthesize", "study_": "study"}


def command_of(path: Path) -> str:
    """The `regenesis` command a config file is for, from its name."""
    return next((cmd for prefix, cmd in SUBCOMMAND_PREFIXES.items() if path.name.startswith(prefix)), "fit")


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    for required in ("smoke_cpu.yaml", "demo_cpu.yaml", "mistral7b_qlora_1gpu.yaml", "mistral7b_qlora_24gb.yaml",
                     "llama3_8b_full_fsdp.yaml", "base_cpu.yaml",
                     "star_cpu.yaml", "lmsi_cpu.yaml", "gt_cpu.yaml"):
        assert required in names


def command_line(path: Path) -> list[str]:
    """The command a config's first line gives (``# regenesis <command> --config A [--config B] ...``), as
    arguments after ``regenesis``, with the configs' paths resolved from the checkout."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "regenesis " in first, f"{path.name}: the first line must say how it runs"
    args = first.split("regenesis ", 1)[1].split("(")[0].split()
    args = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
    assert str(path) in args, f"{path.name}: its first line must run it, not another file"
    placeholder = next((i for i, arg in enumerate(args) if arg.startswith("<")), None)  # `--model <your model>`
    return args if placeholder is None else args[:placeholder - 1]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_against_live_classes(path):
    args = command_line(path)
    command = args[0]
    assert command == command_of(path), f"{path.name}: runs `regenesis {command}`, but its name says otherwise"
    if command == "fit":
        cfg = check_fit_config(args[1:])
        # the round bookkeeping and the run directory are said once and linked everywhere
        assert cfg.trainer.max_epochs == cfg.data.rounds * cfg.data.epochs_per_round
        assert cfg.trainer.reload_dataloaders_every_n_epochs == 1  # the DataModule maps epochs to rounds
        assert cfg.generation.model == cfg.model.base_model
        for section in ("generation", "evaluation", "export"):
            assert cfg[section].run_dir == cfg.data.run_dir
        assert cfg.checkpoint.dirpath == f"{cfg.data.run_dir}/checkpoints"
        assert cfg.checkpoint.save_last and cfg.checkpoint.save_on_train_epoch_end
    else:
        from regenesis_pl.cli import build_parser

        parser = build_parser()
        cfg = parser.parse_args(args)
        assert cfg.command == command
        if command == "study":
            from regenesis_pl.lightning_cli import check_study

            study = parser.instantiate(cfg).study
            check_study(study.fit, study.arms, study.seeds, study.study_dir)  # every arm's fit configuration


def test_overlays_are_short_and_the_shared_cpu_settings_live_once():
    """Each CPU fit overlay keeps only what its method changes: no section repeats base_cpu.yaml's values."""
    base = yaml.safe_load((ROOT / "configs" / "base_cpu.yaml").read_text())
    overlays = [p for p in CONFIGS if command_line(p)[1:3] == ["--config", str(ROOT / "configs" / "base_cpu.yaml")]
                and p.name != "base_cpu.yaml"]
    assert {p.name for p in overlays} >= {"demo_cpu.yaml", "star_cpu.yaml", "lmsi_cpu.yaml", "gt_cpu.yaml"}
    for path in overlays:
        raw = yaml.safe_load(path.read_text())
        for section, values in raw.items():
            if isinstance(values, dict) and isinstance(base.get(section), dict):
                same = {k for k, v in values.items() if base[section].get(k) == v}
                assert not same, f"{path.name}: {section}.{sorted(same)} repeat base_cpu.yaml"
        assert len(path.read_text().splitlines()) < 30, f"{path.name} is no longer a short overlay"


def _smoke_with(tmp_path, edit) -> Path:
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "smoke_cpu.yaml").read_text())
    edit(raw)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_is_named(tmp_path, capsys):
    path = _smoke_with(tmp_path, lambda raw: raw["data"].update(epochs_per_rnd=2))
    with pytest.raises(SystemExit):
        check_fit_config(["--config", str(path)])
    assert "epochs_per_rnd" in capsys.readouterr().err


def test_linked_trainer_key_cannot_be_set_twice(tmp_path, capsys):
    path = _smoke_with(tmp_path, lambda raw: raw["trainer"].update(max_epochs=7))
    with pytest.raises(SystemExit):
        check_fit_config(["--config", str(path)])
    assert "max_epochs" in capsys.readouterr().err


def test_bad_type_is_named(tmp_path, capsys):
    path = _smoke_with(tmp_path, lambda raw: raw["data"].update(rounds="two"))
    with pytest.raises(SystemExit):
        check_fit_config(["--config", str(path)])
    assert "rounds" in capsys.readouterr().err


def test_flat_engine_keys_of_older_configs_get_a_rename_error(tmp_path, capsys):
    old = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "smoke_cpu.yaml").read_text())
    old["generation"] = {"backend": "vllm", "max_model_len": 1024}  # the layout before generation.engine
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(SystemExit) as exit_info:
        check_fit_config(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "generation.backend moved to generation.engine.backend" in err and str(path) in err
