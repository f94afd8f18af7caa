"""``docs/configs.md``: every config key of every command, read from the live parsers.

The parsers are the ones the commands use (LightningCLI for ``fit``, the function parsers of ``cli.py`` for the
others), so the reference lists exactly the keys a YAML file may hold, with the type and default the code
declares and the first sentence of the parameter's docstring. Nested settings (``data.synthesis``,
``generation.engine``, task lists) are dataclasses; their fields are listed under their own key.

    python -m regenesis_pl.config_reference            # print the reference
    python -m regenesis_pl.config_reference --write    # rewrite docs/configs.md
    python -m regenesis_pl.config_reference --check    # exit 1 when docs/configs.md is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "configs.md"
LIGHTNING = {"trainer": "https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-class-api",
             "checkpoint": "https://lightning.ai/docs/pytorch/stable/api/lightning.pytorch.callbacks.ModelCheckpoint.html"}
_SKIP = ("config", "print_config", "help")


def _type_name(hint) -> str:
    """A short, stable spelling of a type hint: module paths dropped, Optional written as ``| None``."""
    text = hint if isinstance(hint, str) else getattr(hint, "__name__", None) if isinstance(hint, type) else repr(hint)
    text = re.sub(r"typing\.Optional\[(.*)\]$", r"\1 | None", str(text))
    text = re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+([A-Za-z_][A-Za-z0-9_]*)", r"\1", text)  # a.b.Name -> Name
    text = re.sub(r"Union\[(.*)\]$", lambda m: " | ".join(p.strip() for p in _split(m.group(1))), text)
    return text.replace("NoneType", "None")


def _split(args: str) -> list[str]:
    """Split ``A, B[C, D], E`` at the top-level commas."""
    parts, depth, current = [], 0, ""
    for ch in args:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    match = re.match(r"(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)
    return (match.group(1) if match else text).replace("|", "\\|")


def _default(value) -> str:
    if value is None or value is argparse.SUPPRESS or value == "==SUPPRESS==":
        return "None" if value is None else ""
    if dataclasses.is_dataclass(value):
        return f"{type(value).__name__}()"
    return f"`{value!r}`".replace("|", "\\|")


def _dataclass_of(hint):
    for arg in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(arg):
            return arg
        for inner in typing.get_args(arg):  # list[TaskConfig]
            if dataclasses.is_dataclass(inner):
                return inner
    return None


def _field_docs(cls) -> dict[str, str]:
    import docstring_parser

    return {p.arg_name: p.description or "" for p in docstring_parser.parse(cls.__doc__ or "").params}


def _dataclass_rows(prefix: str, cls) -> list[tuple[str, str, str, str]]:
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        rows.append((f"{prefix}.{f.name}", _type_name(hints.get(f.name, f.type)),
                     "(required)" if default == "required" else _default(default), _first_sentence(docs.get(f.name))))
    return rows


def parser_rows(parser, lightning_sections=()) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) for every option of ``parser``; dataclass options are expanded."""
    from jsonargparse._actions import _ActionConfigLoad
    from jsonargparse._typehints import ActionTypeHint

    rows = []
    for action in parser._actions:
        dest = action.dest
        if dest.split(".")[-1] in _SKIP or isinstance(action, _ActionConfigLoad) or not dest:
            continue
        if type(action).__name__ == "ActionLink":
            rows.append((dest, "", "", "set from another key (linked by the command); do not set it"))
            continue
        hint = getattr(action, "_typehint", None) if isinstance(action, ActionTypeHint) else None
        section = dest.split(".")[0]
        if section in lightning_sections:
            meaning = f"Lightning's setting: see [its documentation]({LIGHTNING[section]})"
        elif dest == "seed_everything" and lightning_sections:
            meaning = "an int: seed everything with it before the classes are built; true: a random seed"
        else:
            meaning = _first_sentence(action.help)
        rows.append((dest, _type_name(hint) if hint is not None else "", _default(action.default), meaning))
        nested = _dataclass_of(hint) if hint is not None else None
        if nested is not None:
            rows.extend(_dataclass_rows(dest, nested))
    return rows


def fit_parser():
    """The parser ``regenesis fit`` reads a YAML file with, built without parsing or instantiating anything."""
    from regenesis_pl.lightning_cli import ReGenesisCLI, _cli_kwargs

    class _ParserOnly(ReGenesisCLI):
        def parse_arguments(self, parser, args):
            self.config = None

        def _parse_ckpt_path(self):
            pass

        def _set_seed(self):
            pass

        def _add_instantiators(self):
            pass

        def before_instantiate_classes(self):
            pass

        def instantiate_classes(self):
            pass

    return _ParserOnly(**_cli_kwargs(), args=[], run=False).parser


def _table(rows) -> list[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{key}` | {f'`{kind}`'.replace('|', chr(92) + '|') if kind else ''} | {default} | {meaning} |"
              for key, kind, default, meaning in rows]
    return lines


def render() -> str:
    from regenesis_pl.cli import build_parser

    out = ["# Config reference", "",
           ("Generated from the live parsers by `python -m regenesis_pl.config_reference --write`; "
            "`tests/test_docs.py` fails when this file is stale. Every key below can be written in "
            "the command's YAML file (`--config`) or given on the command line (`--data.rounds 3`). Keys the "
            "command sets itself from another key are marked linked."), ""]
    out += ["## `regenesis fit | validate | test`", "",
            ("Sections: `model` (SFTModule), `data` (ReGenesisDataModule), `generation` (EngineCallback), "
             "`evaluation` (EvaluationCallback), `export` (ExportCallback), `round_driver` (RoundDriver), `checkpoint` "
             "(Lightning's ModelCheckpoint) and `trainer` (Lightning's Trainer)."), ""]
    out += _table(parser_rows(fit_parser(), lightning_sections=tuple(LIGHTNING)))
    commands = build_parser()._subcommands_action._name_parser_map
    for name in ("evaluate", "synthesize", "study"):
        out += ["", f"## `regenesis {name}`", ""]
        out += _table(parser_rows(commands[name]))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = args.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {DOC.name}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 when {DOC.name} differs from the live parsers")
    opts = args.parse_args(argv)
    text = render()
    if opts.write:
        DOC.write_text(text)
    elif opts.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is stale: run python -m regenesis_pl.config_reference --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
