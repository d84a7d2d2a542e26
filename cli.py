"""What every command line shares: one-line errors (exit code 2, no traceback) for a bad flag or bad input,
the flags generated from settings.Config (main.py's, and the run flags the benchmarks repeat) with the
classic tool's short spellings, and boolean flag values."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import get_args, get_origin, get_type_hints

from settings import Config, default_workers, flag_name
from utils import UsageError

EXIT_USAGE = 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help ends with its default, but for a None default: its help says what it means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, like every other input error, and also takes the
    short spelling `short` gives a flag (rl_a3c_pytorch's, so that its command lines run unchanged)."""

    def __init__(self, *args, short: dict[str, str] | None = None, **kwargs):
        self.short = short or {}  # set before argparse's own __init__ adds --help
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        return super().add_argument(*[self.short[n] for n in names if n in self.short], *names, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """The flags, with --workers' machine-dependent default filled in (settings.default_workers)."""
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "workers", 0) is None:
            parsed.workers = default_workers(tuple(getattr(parsed, "gpu_ids", Config.gpu_ids)))
        return parsed

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def str2bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "y"):
        return True
    if text.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


# A boolean flag that takes a value or none: --amsgrad, --shared-optimizer False.
BOOL_FLAG = {"type": str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}


# The command line's defaults where they differ from Config's (the API's): --workers follows the machine and
# --gpu-ids (settings.default_workers), so it is filled in once the flags are parsed.
COMMAND_LINE_DEFAULTS = {"workers": None}


def add_config_flags(p: argparse.ArgumentParser, settings=Config, names=None, helps: dict | None = None) -> None:
    """A flag for each field of the settings dataclass `settings` that is a settings.setting (or only `names`),
    with its type, default, choices and help from there (`helps` replaces some); booleans take a value or
    none, tuples several values."""
    hints = get_type_hints(settings)
    for spec in fields(settings):
        if "help" not in spec.metadata or (names is not None and spec.name not in names):
            continue
        default = COMMAND_LINE_DEFAULTS.get(spec.name, spec.default) if settings is Config else spec.default
        kind = hints[spec.name]
        options: dict = {"help": (helps or {}).get(spec.name, spec.metadata["help"]), "default": default}
        options["dest"] = spec.name
        if kind is not bool and spec.metadata["choices"] is None:
            options["metavar"] = flag_name(spec).removeprefix("--").replace("-", "_").upper()
        if kind is bool:
            options |= BOOL_FLAG
        elif get_origin(kind) is tuple:
            options |= {"type": get_args(kind)[0], "nargs": "+", "default": list(default)}
        else:
            options["type"] = next(t for t in (get_args(kind) or (kind,)) if t is not type(None))
        if spec.metadata["choices"] is not None:
            options["choices"] = spec.metadata["choices"]
        if spec.metadata.get("bare") is not None:
            options |= {"nargs": "?", "const": spec.metadata["bare"]}
        p.add_argument(flag_name(spec), **options)


def config_from(args: argparse.Namespace, settings=Config, **values):
    """The parsed flags (those that are fields of `settings`; lists back to tuples) and `values` as settings."""
    names = {spec.name for spec in fields(settings)}
    parsed = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    return settings(**parsed | values)


def classic_short(*settings) -> dict[str, str]:
    """rl_a3c_pytorch's short spellings of the flags of `settings` (default: Config's), as Parser's `short` takes."""
    specs = [spec for cls in settings or (Config,) for spec in fields(cls)]
    return {flag_name(spec): spec.metadata["short"] for spec in specs if spec.metadata.get("short")}


def add_run_flags(p: argparse.ArgumentParser, gpus: bool = True, workers_help: str = "training processes") -> None:
    """--env, --workers (and --gpu-ids) as main.py has them, for the commands that start training runs."""
    add_config_flags(
        p, Config, ("env", "workers", "gpu_ids") if gpus else ("env", "workers"), {"workers": workers_help}
    )


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body; bad input (UsageError) is printed as one line and exits 2."""
    try:
        return body()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
