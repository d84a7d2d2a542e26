"""settings.py: the flags generated from Config, the value checks, the seed plan (pure: no GPU needed)."""

from dataclasses import replace

import pytest
import torch

from settings import Config


@pytest.mark.parametrize("envs_per_worker", [1, 3])
def test_every_env_of_every_process_on_every_host_has_its_own_seed(envs_per_worker):
    from distributed import host_seed

    everyone = [{"workers": w, "envs_per_worker": envs_per_worker} for w in (2, 4, 1)]
    seeds = []
    for host, theirs in enumerate(everyone):
        cfg = Config(seed=5, workers=theirs["workers"], envs_per_worker=envs_per_worker)
        cfg = replace(cfg, seed=host_seed(cfg.seed, everyone, host))
        workers = [cfg.seed_for(rank) + i for rank in range(cfg.workers) for i in range(envs_per_worker)]
        seeds += workers + [cfg.seed_for(cfg.workers)]  # the test process plays one env
    assert len(seeds) == len(set(seeds)), sorted(seeds)
    assert min(seeds) == 5


def test_every_setting_but_the_host_s_place_is_a_flag_with_config_s_default():
    from dataclasses import fields

    from main import parse_config

    flags = [f.name for f in fields(Config) if "help" in f.metadata]
    assert flags == [f.name for f in fields(Config) if f.name not in ("textbook", "host", "hosts")]
    from settings import default_workers

    assert parse_config([]) == Config(workers=default_workers((-1,)))
    cfg = parse_config(["--bf16", "--shared-optimizer", "False", "--gpu-ids", "0", "1", "--target-score", "18"])
    assert (cfg.bf16, cfg.shared_optimizer, cfg.gpu_ids, cfg.target_score) == ("on", False, (0, 1), 18.0)
    assert parse_config(["--bf16", "auto"]).bf16 == "auto" and parse_config([]).bf16 == "auto"


def test_a_value_outside_a_setting_s_choices_is_one_line_for_the_api_too():
    from settings import check_values
    from utils import UsageError

    for name, bad in (("optimizer", "SGD"), ("sync_op", "max"), ("mps", "sometimes"), ("bf16", "maybe")):
        flag = "--" + name.replace("_", "-")
        with pytest.raises(UsageError, match=f"^{flag} must be one of .*, got '{bad}'$"):
            check_values(replace(Config(), **{name: bad}))


def test_acting_without_autograd_is_checked_against_the_textbook_path_and_the_cpu():
    from main import parse_config
    from settings import check_values
    from utils import UsageError

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert Config(bf16="off").acting_path(cpu) == "fast" and Config(textbook=True).acting_path(cpu) == "textbook"
    on = parse_config(["--replay-convs"])
    assert on.replay_convs == "on" and on.acting_path(cpu) == Config(cuda_graph="on").acting_path(gpu) == "replay"
    check_values(Config(replay_convs="on"))
    check_values(Config(textbook=True))  # auto gives way to the textbook path
    with pytest.raises(UsageError, match="^the textbook path keeps each step's autograd graph: drop --replay-convs"):
        check_values(Config(textbook=True, replay_convs="on"))
    with pytest.raises(UsageError, match="^--cuda-graph acts without autograd, as --replay-convs on does: drop"):
        check_values(Config(cuda_graph="on", replay_convs="off"))
    with pytest.raises(UsageError, match="^--cuda-graph captures the acting forward on a GPU: pass --gpu-ids"):
        check_values(Config(cuda_graph="on"))


def test_a_restarted_process_takes_seeds_that_no_env_of_the_run_uses():
    cfg = Config(seed=3, workers=4, envs_per_worker=2)
    first = {cfg.seed_for(slot) + i for slot in range(cfg.workers + 1) for i in range(cfg.envs_per_worker)}
    for incarnation in (1, 2):
        again = {cfg.seed_for(slot, incarnation) + i for slot in range(cfg.workers + 1) for i in range(2)}
        assert len(again) == 10 and not again & first
        first |= again


def test_amsgrad_is_an_adam_variant():
    from settings import check_values
    from utils import UsageError

    check_values(Config(amsgrad=True))
    with pytest.raises(UsageError, match="^--amsgrad is a variant of Adam: .* --optimizer Adam"):
        check_values(Config(amsgrad=True, optimizer="RMSprop"))


def test_the_cgroup_cpu_quota_is_read_from_v2_and_v1_files(tmp_path):
    from settings import cgroup_cpu_quota

    assert cgroup_cpu_quota(str(tmp_path)) is None  # no files: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(v1)) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_quota(str(v1)) == 3.0


def test_the_default_worker_count_is_the_cpus_this_process_may_use_and_at_most_16_per_gpu():
    import os
    import subprocess
    import sys

    from settings import GPU_WORKERS_PER_GPU, default_workers, usable_cpus
    from tests.helpers import ROOT

    assert default_workers((-1,)) == usable_cpus() <= os.cpu_count()
    assert default_workers((0,)) == min(usable_cpus(), GPU_WORKERS_PER_GPU)
    assert default_workers((0, 1, 0)) == min(usable_cpus(), 2 * GPU_WORKERS_PER_GPU)
    pinned = subprocess.run(  # a real affinity of one CPU, as taskset or a batch scheduler sets it
        [sys.executable, "-c", "from main import parse_config; print(parse_config([]).workers)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
        timeout=60,
    )
    assert pinned.stdout.strip() == "1", pinned.stderr


def test_replay_convs_auto_follows_the_precision_a_cpu_worker_takes():
    """auto recomputes the convolutions where bench.py measured it faster (bf16 on a CPU, any GPU), not for CPU
    workers in fp32."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert Config(bf16="on").acting_path(cpu) == "replay" and Config(bf16="off").acting_path(cpu) == "fast"
    assert Config(bf16="on", replay_convs="off").acting_path(cpu) == "fast"
    assert Config(bf16="off", replay_convs="on").acting_path(cpu) == "replay"
    assert Config(cuda_graph="off").acting_path(gpu) == "replay"
    assert Config(replay_convs="off").acting_path(gpu) == "fast"


def test_cuda_graph_auto_captures_the_acting_forward_of_gpu_workers_only():
    """auto takes the graph where bench.py measured it fastest (16 A3G workers under MPS: 1.37x the fast path),
    never on a CPU, and gives way to an explicit autograd path."""
    from main import parse_config
    from settings import check_values

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert Config().uses_cuda_graph(gpu) and not Config().uses_cuda_graph(cpu)
    assert not Config(replay_convs="off").uses_cuda_graph(gpu) and not Config(textbook=True).uses_cuda_graph(gpu)
    assert not Config(cuda_graph="off").uses_cuda_graph(gpu) and Config(cuda_graph="on").uses_cuda_graph(gpu)
    assert parse_config(["--cuda-graph"]).cuda_graph == "on"
    check_values(Config(replay_convs="off"))  # auto gives way on a GPU, and is off on a CPU
    check_values(Config(textbook=True, gpu_ids=(-1,)))


def test_bf16_auto_is_on_where_the_cpu_has_native_bf16_units_and_off_elsewhere(tmp_path):
    import torch

    from settings import bf16_for, cpu_bf16_units, describe_bf16

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for flags, units in (("fpu avx2 avx512f", ()), ("avx2 avx512_bf16 amx_bf16 amx_tile", ("amx_bf16", "avx512_bf16"))):
        info = tmp_path / f"cpuinfo{len(units)}"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_bf16_units(str(info)) == units
    assert cpu_bf16_units(str(tmp_path / "none")) == ()
    assert bf16_for("on", cpu) and bf16_for("on", gpu) and not bf16_for("off", cpu)
    assert bf16_for("auto", cpu) == bool(cpu_bf16_units()) and not bf16_for("auto", gpu)
    line = describe_bf16("auto", cpu)
    assert ("has no native bf16 units" in line) != bool(cpu_bf16_units()) and line.startswith(
        "bf16 convolutions" if cpu_bf16_units() else "fp32"
    )
    assert "TF32" in describe_bf16("auto", gpu) and "TF32" not in describe_bf16("off", cpu)  # cuDNN's default on GPUs
    assert describe_bf16("on", gpu) == "bf16 convolutions (--bf16 on)"
