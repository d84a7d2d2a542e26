"""Train an A3C-LSTM (A3G with --gpu-ids) agent from the command line: the flags become settings for api.train.

python main.py --env PongNoFrameskip-v4 --workers 32 --gpu-ids 0 1 2 3 --amsgrad

Every flag is one of settings.Config's fields, generated from it (each field's settings.setting holds its help
text and rl_a3c_pytorch's short spelling, so that a classic command line runs unchanged).
"""

from __future__ import annotations

import sys

from api import train
from cli import Parser, add_config_flags, classic_short, config_from, run_command
from settings import Config


def build_parser() -> Parser:
    description = "A3C-LSTM / A3G training on Atari (gymnasium + ale-py)."
    p = Parser(prog="main.py", description=description, short=classic_short())
    add_config_flags(p)
    return p


def parse_config(argv: list[str] | None = None) -> Config:
    """The flags as the run's settings (checked by api.train)."""
    return config_from(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(lambda: train(parse_config(argv)).exit_code)
    except KeyboardInterrupt:  # before training started: nothing to save
        return 130


if __name__ == "__main__":
    sys.exit(main())
