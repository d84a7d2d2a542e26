"""Train an A3C-LSTM (A3G with --gpu-ids) agent from the command line: the flags become settings for api.train.

python main.py --env PongNoFrameskip-v4 --workers 32 --gpu-ids 0 1 2 3 --amsgrad
"""

from __future__ import annotations

import os
import sys

from api import train
from cli import BOOL_FLAG, Parser, run_command
from mps import MODES as MPS_MODES
from settings import Config

# rl_a3c_pytorch's short spellings of its flags, so that a classic command line runs unchanged.
CLASSIC_SHORT = {
    "--lr": "-l",
    "--entropy-coef": "-ec",
    "--value-coef": "-vc",
    "--gamma": "-g",
    "--tau": "-t",
    "--seed": "-s",
    "--workers": "-w",
    "--num-steps": "-ns",
    "--max-episode-length": "-mel",
    "--env": "-ev",
    "--shared-optimizer": "-so",
    "--load": "-ld",
    "--save-max": "-sm",
    "--optimizer": "-o",
    "--load-model-dir": "-lmd",
    "--save-model-dir": "-smd",
    "--log-dir": "-lg",
    "--gpu-ids": "-gp",
    "--amsgrad": "-a",
    "--hidden-size": "-hs",
    "--tensorboard-logger": "-tl",
    "--env-config": "-evc",
    "--distributed-step-size": "-dss",
}


def build_parser() -> Parser:
    p = Parser(
        prog="main.py", description="A3C-LSTM / A3G training on Atari (gymnasium + ale-py).", short=CLASSIC_SHORT
    )
    defaults = Config()  # the one place the defaults are written
    flag = BOOL_FLAG
    p.add_argument(
        "--env", default=defaults.env, help="gymnasium env id (ALE ids, <Game>Deterministic-v4, module:EnvId)"
    )
    p.add_argument("--env-config", default=defaults.env_config, help="per-game crop settings (JSON)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="learning rate (the classic tool: 1e-4)")
    p.add_argument("--gamma", type=float, default=defaults.gamma, help="discount factor for rewards")
    p.add_argument("--tau", type=float, default=defaults.tau, help="GAE lambda (the classic tool: 1.0)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed; worker i uses seed + i")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="training processes")
    p.add_argument("--num-steps", type=int, default=defaults.num_steps, help="rollout length (agent steps per update)")
    p.add_argument(
        "--distributed-step-size",
        type=int,
        nargs="+",
        default=list(defaults.distributed_step_size),
        help="rollout lengths assigned round-robin to workers, e.g. 16 32 64 (overrides --num-steps)",
    )
    p.add_argument(
        "--max-episode-length",
        type=int,
        default=defaults.max_episode_length,
        help="agent steps before an episode is truncated",
    )
    p.add_argument(
        "--skip-rate", type=int, default=defaults.skip_rate, help="frames each action repeats on NoFrameskip ids"
    )
    p.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="LSTM hidden size")
    p.add_argument("--entropy-coef", type=float, default=defaults.entropy_coef, help="entropy bonus coefficient")
    p.add_argument("--value-coef", type=float, default=defaults.value_coef, help="value loss coefficient")
    p.add_argument(
        "--max-grad-norm", type=float, default=defaults.max_grad_norm, help="clip gradients to this norm (0: off)"
    )
    p.add_argument("--optimizer", default=defaults.optimizer, choices=["Adam", "RMSprop"], help="shared optimizer")
    p.add_argument("--amsgrad", default=defaults.amsgrad, help="use the AMSGrad variant of Adam", **flag)
    p.add_argument(
        "--shared-optimizer",
        default=defaults.shared_optimizer,
        help="share optimizer statistics between workers",
        **flag,
    )
    p.add_argument(
        "--load", default=defaults.load, help="resume from <load-model-dir>/<env>.dat (or the newer _last.dat)", **flag
    )
    p.add_argument(
        "--save-max",
        default=defaults.save_max,
        help="save <env>.dat only on a new best test score (the final state goes to <env>_last.dat)",
        **flag,
    )
    p.add_argument("--load-model-dir", default=defaults.load_model_dir, help="where --load looks")
    p.add_argument("--save-model-dir", default=defaults.save_model_dir, help="where checkpoints are written")
    p.add_argument("--log-dir", default=defaults.log_dir, help="where logs, metrics and plots are written")
    p.add_argument(
        "--gpu-ids", type=int, nargs="+", default=list(defaults.gpu_ids), help="GPUs for workers, round-robin (-1: CPU)"
    )
    p.add_argument(
        "--mps",
        default=defaults.mps,
        choices=MPS_MODES,
        help="CUDA MPS for workers sharing a GPU: auto uses a running daemon or starts one for the run and goes "
        "on without where it cannot; on makes that an error; off keeps workers off MPS",
    )
    p.add_argument(
        "--envs-per-worker",
        type=int,
        default=defaults.envs_per_worker,
        help="environments each worker steps with one batched forward",
    )
    p.add_argument(
        "--textbook",
        default=defaults.textbook,
        help="per-step autograd forward as the classic tool does (the baseline bench.py compares with)",
        **flag,
    )
    p.add_argument(
        "--channels-last",
        default=defaults.channels_last,
        help="channels-last memory layout for the convolutions",
        **flag,
    )
    p.add_argument("--bf16", default=defaults.bf16, help="bfloat16 autocast for the convolutions", **flag)
    p.add_argument(
        "--test-interval",
        type=float,
        default=defaults.test_interval,
        help="seconds the test process waits between games",
    )
    p.add_argument(
        "--test-stochastic",
        default=defaults.test_stochastic,
        help="test games sample actions from the policy instead of argmax (as gym_eval.py --stochastic)",
        **flag,
    )
    p.add_argument(
        "--progress-interval", type=float, default=defaults.progress_interval, help="seconds between progress lines"
    )
    p.add_argument(
        "--max-steps", type=int, default=defaults.max_steps, help="stop after this many frames (0: no limit)"
    )
    p.add_argument(
        "--max-time", type=float, default=defaults.max_time, help="stop after this many seconds (0: no limit)"
    )
    p.add_argument(
        "--target-score", type=float, default=defaults.target_score, help="stop once the test mean reaches this score"
    )
    p.add_argument(
        "--target-window", type=int, default=defaults.target_window, help="test games averaged for --target-score"
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=defaults.max_restarts,
        help="restarts allowed per process before the run stops",
    )
    p.add_argument(
        "--max-nan-updates",
        type=int,
        default=defaults.max_nan_updates,
        help="non-finite updates in a row that stop the run",
    )
    p.add_argument(
        "--tensorboard-logger",
        default=defaults.tensorboard_logger,
        help="write TensorBoard scalars under <log-dir>/tensorboard",
        **flag,
    )
    p.add_argument(
        "--sync-interval",
        type=float,
        default=defaults.sync_interval,
        help="multi-host runs (torchrun): seconds between syncs of the hosts' shared weights",
    )
    p.add_argument(
        "--sync-timeout",
        type=float,
        default=defaults.sync_timeout,
        help="multi-host runs: seconds without an answer from a host before the others stop the run",
    )
    p.add_argument(
        "--sync-op",
        default=defaults.sync_op,
        choices=["mean", "sum"],
        help="multi-host runs: apply the mean or the sum of the hosts' weight changes at each sync",
    )
    return p


def parse_config(argv: list[str] | None = None) -> Config:
    """The flags as the run's settings (checked by api.train)."""
    args = vars(build_parser().parse_args(argv))
    args["gpu_ids"] = tuple(args["gpu_ids"])
    args["distributed_step_size"] = tuple(args["distributed_step_size"])
    return Config(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(lambda: train(parse_config(argv)).exit_code)
    except KeyboardInterrupt:  # before training started: nothing to save
        return 130


if __name__ == "__main__":
    sys.exit(main())
