"""A run's settings: one typed, read-only object, its value checks and the device placement it implies."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from functools import cache

import torch

from utils import UsageError, safe_name


def setting(
    default, help: str, short: str | None = None, choices: tuple | None = None, flag: str | None = None, bare=None
):
    """A settings field and its command-line flag in one place: the default, the flag's help, rl_a3c_pytorch's
    short spelling, the allowed values, the flag's name where it is not the field's, and the value of the flag
    given alone (cli.add_config_flags makes the flags; check_values checks the choices)."""
    metadata = {"help": help, "short": short, "choices": choices, "flag": flag, "bare": bare}
    return field(default=default, metadata=metadata)


AUTO_ON_OFF = ("auto", "on", "off")  # the choices of --mps, --bf16 and --replay-convs
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's flags of CPUs with bf16 matrix or vector units


@cache
def cpu_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """This CPU's native bf16 units (NATIVE_BF16 flags it has); () where it has none or the file is unreadable."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ()
    return tuple(flag for flag in NATIVE_BF16 if flag in flags)


def bf16_for(mode: str, device: torch.device) -> bool:
    """Whether a process on `device` runs its convolutions in bf16 under --bf16 `mode` (see Config.bf16)."""
    if mode == "auto":
        return device.type == "cpu" and bool(cpu_bf16_units())
    return mode == "on"


def describe_bf16(mode: str, device: torch.device) -> str:
    """The precision a process on `device` takes under --bf16 `mode`, and why, for the run's log."""
    on = bf16_for(mode, device)
    precision = "bf16 convolutions" if on else "fp32"
    if not on and device.type == "cuda":
        precision += " (convolutions in TF32 on GPUs that have it: cuDNN's default in torch)"
    if mode != "auto":
        return f"{precision} (--bf16 {mode})"
    if device.type != "cpu":
        return f"{precision} (--bf16 auto: on CPUs only; on a GPU bf16 was measured slower on every acting path)"
    units = cpu_bf16_units()
    why = f"this CPU has {', '.join(units)}" if units else "this CPU has no native bf16 units (AMX, AVX512-BF16)"
    return f"{precision} (--bf16 auto: {why})"


def same_setting(name: str, **changes):
    """Config's setting `name` for another command's settings, with `changes` (default, help, short, ...): a
    setting both commands take is written once."""
    spec = next(spec for spec in fields(Config) if spec.name == name)
    values = {"default": spec.default, **spec.metadata, **changes}
    return setting(values.pop("default"), **values)


def flag_name(spec) -> str:
    """A settings field's command-line flag: --field-name, or the one its setting names."""
    return spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")


@dataclass(frozen=True)
class Config:
    """Every setting of a training run, parsed once by main.py and read-only after."""

    env: str = setting(
        "PongNoFrameskip-v4", "gymnasium env id (ALE ids, <Game>Deterministic-v4, module:EnvId)", short="-ev"
    )
    env_config: str = setting("config.json", "per-game crop settings (JSON)", short="-evc")
    lr: float = setting(2e-4, "learning rate (the classic tool: 1e-4)", short="-l")
    gamma: float = setting(0.99, "discount factor for rewards", short="-g")
    tau: float = setting(0.92, "GAE lambda (the classic tool: 1.0)", short="-t")
    seed: int = setting(
        1,
        "random seed of the shared model's initial weights and of every env: worker i's env j plays seed + i "
        "* envs-per-worker + j, the test process the next block; a restarted process takes new seeds",
        short="-s",
    )
    workers: int = setting(
        2,
        "training processes; default: one per CPU this process may use (its affinity and cgroup CPU quota), "
        "and with --gpu-ids at most 16 per GPU (a GPU's CUDA MPS clients, each with its own context)",
        short="-w",
    )
    num_steps: int = setting(20, "rollout length (agent steps per update)", short="-ns")
    distributed_step_size: tuple[int, ...] = setting(
        (), "rollout lengths assigned round-robin to workers, e.g. 16 32 64 (overrides --num-steps)", short="-dss"
    )
    max_episode_length: int = setting(
        10000,
        "agent steps before a game (all its lives) is cut off; ALE also ends v4 ids' games at 108,000 frames "
        "(27,000 agent steps at frame skip 4)",
        short="-mel",
    )
    skip_rate: int = setting(4, "frames each action repeats on NoFrameskip ids")
    hidden_size: int = setting(512, "LSTM hidden size", short="-hs")
    entropy_coef: float = setting(0.01, "entropy bonus coefficient", short="-ec")
    value_coef: float = setting(0.5, "value loss coefficient", short="-vc")
    max_grad_norm: float = setting(0.0, "clip gradients to this norm (0: off)")
    optimizer: str = setting("Adam", "shared optimizer", short="-o", choices=("Adam", "RMSprop"))
    amsgrad: bool = setting(False, "use the AMSGrad variant of Adam", short="-a")
    shared_optimizer: bool = setting(True, "share optimizer statistics between workers", short="-so")
    load: bool = setting(False, "resume from <load-model-dir>/<env>.dat (or the newer _last.dat)", short="-ld")
    save_max: bool = setting(
        False, "save <env>.dat only on a new best test score (the final state goes to <env>_last.dat)", short="-sm"
    )
    load_model_dir: str = setting("trained_models/", "where --load (and gym_eval.py) look for <env>.dat", short="-lmd")
    save_model_dir: str = setting("trained_models/", "where checkpoints are written", short="-smd")
    log_dir: str = setting("logs/", "where logs, metrics and plots are written", short="-lg")
    gpu_ids: tuple[int, ...] = setting((-1,), "GPUs for workers, round-robin (-1: CPU)", short="-gp")
    mps: str = setting(
        "auto",
        "CUDA MPS for workers sharing a GPU: auto uses a running daemon or starts one for the run and goes on "
        "without where it cannot; on makes that an error; off keeps workers off MPS",
        choices=AUTO_ON_OFF,
    )
    envs_per_worker: int = setting(1, "environments each worker steps with one batched forward")
    channels_last: bool = setting(True, "channels-last memory layout for the convolutions")
    bf16: str = setting(
        "auto",
        "bfloat16 autocast for the convolutions: on, off, or auto (on where the CPU has native bf16 units, AMX "
        "or AVX512-BF16, where Pong reached 18 in fewer frames and minutes than fp32; off on other CPUs, which "
        "emulate bf16 slowly, and on GPUs, where it was measured slower); --bf16 alone is on",
        choices=AUTO_ON_OFF,
        bare="on",
    )
    replay_convs: str = setting(
        "auto",
        "act without autograd and recompute the rollout's convolutions in one batched pass at the update: on, "
        "off, or auto (on for GPU workers and for CPU workers whose convolutions run in bf16, where the batched "
        "pass is measured faster; off for CPU workers in fp32, where it is slower); --replay-convs alone is on",
        choices=AUTO_ON_OFF,
        bare="on",
    )
    cuda_graph: str = setting(
        "auto",
        "replay each acting step's forward as one captured CUDA graph (GPU workers; implies --replay-convs on): "
        "on, off, or auto (on for GPU workers, the fastest path measured there, unless --replay-convs off asks "
        "for the autograd path; off on CPUs); --cuda-graph alone is on",
        choices=AUTO_ON_OFF,
        bare="on",
    )
    test_interval: float = setting(5.0, "seconds the test process waits between games")
    test_stochastic: bool = setting(
        False, "test games sample actions from the policy instead of argmax (as gym_eval.py --stochastic)"
    )
    test_epsilon: float = setting(
        0.0, "test games take a uniformly random action with this chance at each step (as gym_eval.py --epsilon)"
    )
    progress_interval: float = setting(10.0, "seconds between progress lines")
    max_steps: int = setting(0, "stop once the run has trained this many frames, counted across --load (0: no limit)")
    max_time: float = setting(
        0.0, "stop once the run has trained this many seconds, counted across --load (0: no limit)"
    )
    target_score: float | None = setting(None, "stop once the test mean reaches this score")
    target_window: int = setting(10, "test games averaged for --target-score")
    max_restarts: int = setting(
        3,
        "restarts allowed per process before the run stops (under CUDA MPS: per GPU, whose processes restart together)",
    )
    max_nan_updates: int = setting(100, "non-finite updates in a row that stop the run")
    tensorboard_logger: bool = setting(False, "write TensorBoard scalars under <log-dir>/tensorboard", short="-tl")
    sync_interval: float = setting(
        2.0, "multi-host runs (torchrun): seconds between syncs of the hosts' shared weights"
    )
    sync_timeout: float = setting(
        30.0, "multi-host runs: seconds without an answer from a host before the others stop the run"
    )
    sync_op: str = setting(
        "mean",
        "multi-host runs: apply the mean or the sum of the hosts' weight changes at each sync",
        choices=("mean", "sum"),
    )
    textbook: bool = False  # benchmarks/bench.py's baseline: every step keeps its autograd graph (train.Textbook)
    host: int = 0  # this host's rank in a multi-host run (set from torchrun's environment, not a flag)
    hosts: int = 1

    def device_for(self, rank: int) -> torch.device:
        """Worker `rank`'s device: gpu_ids[rank % len] (A3G), or the CPU for -1."""
        gpu = self.gpu_ids[rank % len(self.gpu_ids)]
        return torch.device("cpu") if gpu < 0 else torch.device("cuda", gpu)

    def acting_path(self, device: torch.device) -> str:
        """The acting path (train.ACTING_PATHS) of a worker on `device`: "textbook" (benchmarks' baseline),
        "replay" (--replay-convs on, auto on a GPU or with bf16 on a CPU, or a CUDA graph, whose captured
        forward keeps no autograd graph), else "fast"."""
        if self.textbook:
            return "textbook"
        auto = self.replay_convs == "auto" and (device.type == "cuda" or self.uses_bf16(device))
        return "replay" if auto or self.replay_convs == "on" or self.uses_cuda_graph(device) else "fast"

    def uses_cuda_graph(self, device: torch.device) -> bool:
        """Whether a worker on `device` acts through a captured CUDA graph: --cuda-graph on, or auto on a GPU
        where neither --replay-convs off nor the textbook path asks for acting with autograd."""
        if self.cuda_graph == "auto":
            return device.type == "cuda" and not self.textbook and self.replay_convs != "off"
        return self.cuda_graph == "on"

    def seed_for(self, slot: int, incarnation: int = 0) -> int:
        """The first seed of process `slot` (workers 0..workers-1, the test process: workers); its env i takes
        seed_for(slot) + i. Each process holds a block of envs_per_worker seeds, so that every env of every
        process has its own (another host's processes start after this host's block: seed_block). A process
        restarted for the n-th time (`incarnation` n) takes its block RESTART_STRIDE * n further on, so that
        it does not replay the games its earlier incarnations played."""
        return self.seed + slot * self.envs_per_worker + incarnation * RESTART_STRIDE

    def uses_bf16(self, device: torch.device) -> bool:
        return bf16_for(self.bf16, device)

    def steps_for(self, rank: int) -> int:
        """Rollout length of worker `rank`: its round-robin share of --distributed-step-size, else --num-steps."""
        sizes = self.distributed_step_size
        return sizes[rank % len(sizes)] if sizes else self.num_steps

    def checkpoint_path(self, directory: str | None = None, suffix: str = "") -> str:
        return os.path.join(directory or self.save_model_dir, f"{safe_name(self.env)}{suffix}.dat")

    def log_path(self, suffix: str) -> str:
        """Host 0's logs are <env><suffix>; another host's <env>_host<N><suffix> (a shared log dir stays apart)."""
        host = f"_host{self.host}" if self.host else ""
        return os.path.join(self.log_dir, f"{safe_name(self.env)}{host}{suffix}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


RESTART_STRIDE = 1_000_003  # seeds between a process's incarnations: past every env of any run's first incarnation


GPU_WORKERS_PER_GPU = 16  # the default's cap: CUDA MPS serves 48 clients per GPU (16 before Volta)


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, bounded by a cgroup CPU quota (a container limited to 2 CPUs on
    a 64-core host sees 64 in os.cpu_count()). Logical CPUs: a worker spends about half of each step in the
    emulator and Python, which a sibling hyperthread overlaps with the other's arithmetic."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 cpu.max, or v1 cfs quota/period); None: no limit."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def default_workers(gpu_ids: tuple[int, ...]) -> int:
    """The command line's --workers: one per usable CPU, and with GPUs at most GPU_WORKERS_PER_GPU per GPU."""
    cpus = usable_cpus()
    gpus = len(set(gpu_ids) - {-1})
    return min(cpus, GPU_WORKERS_PER_GPU * gpus) if gpus else cpus


def seed_block(workers: int, envs_per_worker: int) -> int:
    """How many seeds a host's processes use: one block of envs_per_worker per worker and for the test process."""
    return (workers + 1) * envs_per_worker


def check_values(cfg: Config) -> None:
    """Flag values that cannot work, each as one UsageError line."""
    positive = {
        "--workers": cfg.workers,
        "--num-steps": cfg.num_steps,
        "--hidden-size": cfg.hidden_size,
        "--skip-rate": cfg.skip_rate,
        "--max-episode-length": cfg.max_episode_length,
        "--envs-per-worker": cfg.envs_per_worker,
        "--target-window": cfg.target_window,
        "--max-nan-updates": cfg.max_nan_updates,
    }
    for name, value in positive.items():
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if any(s < 1 for s in cfg.distributed_step_size):
        raise UsageError(f"--distributed-step-size values must be at least 1, got {list(cfg.distributed_step_size)}")
    if not cfg.lr > 0 or not math.isfinite(cfg.lr):
        raise UsageError(f"--lr must be a positive number, got {cfg.lr}")
    if not 0 < cfg.gamma <= 1:
        raise UsageError(f"--gamma must lie in (0, 1], got {cfg.gamma}")
    if not 0 <= cfg.tau <= 1:
        raise UsageError(f"--tau must lie in [0, 1], got {cfg.tau}")
    for name, value in {
        "--entropy-coef": cfg.entropy_coef,
        "--value-coef": cfg.value_coef,
        "--max-grad-norm": cfg.max_grad_norm,
        "--test-interval": cfg.test_interval,
        "--max-steps": cfg.max_steps,
        "--max-time": cfg.max_time,
        "--max-restarts": cfg.max_restarts,
    }.items():
        if value < 0:
            raise UsageError(f"{name} must not be negative, got {value}")
    for name, value in {
        "--progress-interval": cfg.progress_interval,
        "--sync-interval": cfg.sync_interval,
        "--sync-timeout": cfg.sync_timeout,
    }.items():
        if not value > 0 or not math.isfinite(value):
            raise UsageError(f"{name} must be a positive number of seconds, got {value}")
    check_probability("--test-epsilon", cfg.test_epsilon)
    check_choices(cfg)
    if cfg.amsgrad and cfg.optimizer != "Adam":
        raise UsageError(f"--amsgrad is a variant of Adam: drop it, or pass --optimizer Adam (got {cfg.optimizer})")
    check_gpus(cfg.gpu_ids)
    if cfg.textbook and "on" in (cfg.replay_convs, cfg.cuda_graph):
        raise UsageError("the textbook path keeps each step's autograd graph: drop --replay-convs and --cuda-graph")
    if cfg.cuda_graph == "on" and cfg.replay_convs == "off":
        raise UsageError("--cuda-graph acts without autograd, as --replay-convs on does: drop --replay-convs off")
    if cfg.cuda_graph == "on" and -1 in cfg.gpu_ids:
        raise UsageError("--cuda-graph captures the acting forward on a GPU: pass --gpu-ids with GPU ids too")


def check_probability(flag: str, value: float) -> None:
    """A setting that is a probability lies in [0, 1] (NaN does not)."""
    if not 0 <= value <= 1:
        raise UsageError(f"{flag} is a probability: it must lie in [0, 1], got {value}")


def check_choices(settings) -> None:
    """Each setting with a fixed set of values (a setting's `choices`) holds one of them; for API callers too."""
    for spec in fields(settings):
        choices = spec.metadata.get("choices")
        if choices is not None and getattr(settings, spec.name) not in choices:
            value = getattr(settings, spec.name)
            raise UsageError(f"{flag_name(spec)} must be one of {', '.join(choices)}, got {value!r}")


def check_gpus(gpu_ids) -> None:
    count = torch.cuda.device_count()
    for gpu in gpu_ids:
        if gpu >= count or gpu < -1:
            raise UsageError(
                f"GPU id {gpu} does not exist (this machine has {count} CUDA device{'s' * (count != 1)}): "
                f"pass --gpu-ids -1 for the CPU" + (f" or ids 0..{count - 1}" if count else "")
            )
    if -1 in gpu_ids and len(gpu_ids) > 1:
        raise UsageError("--gpu-ids mixes -1 (CPU) with GPU ids: pass either -1 or GPU ids")
