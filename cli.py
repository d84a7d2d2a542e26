"""What every command line shares: one-line errors (exit code 2, no traceback) for a bad flag or bad input,
the classic tool's short flag spellings, boolean flag values, and the run flags the benchmarks repeat."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from settings import Config
from utils import UsageError

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, like every other input error, and also takes the
    short spelling `short` gives a flag (rl_a3c_pytorch's, so that its command lines run unchanged)."""

    def __init__(self, *args, short: dict[str, str] | None = None, **kwargs):
        self.short = short or {}  # set before argparse's own __init__ adds --help
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        return super().add_argument(*[self.short[n] for n in names if n in self.short], *names, **kwargs)

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


def add_run_flags(p: argparse.ArgumentParser, gpus: bool = True, workers_help: str = "training processes") -> None:
    """--env, --workers (and --gpu-ids) with main.py's defaults, for the commands that start training runs."""
    defaults = Config()
    p.add_argument("--env", default=defaults.env, help="gymnasium env id")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help=workers_help)
    if gpus:
        p.add_argument("--gpu-ids", type=int, nargs="+", default=list(defaults.gpu_ids), help="GPUs (-1: CPU)")


def run_command(body: Callable[[], int]) -> int:
    """Run a command's body; bad input (UsageError) is printed as one line and exits 2."""
    try:
        return body()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
