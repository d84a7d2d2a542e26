"""settings.py: device placement hints and the seed plan (pure: no GPU needed)."""

import socket
from dataclasses import replace

import pytest

from settings import Config, gpu_sharing_warning, mps_running


def test_workers_sharing_a_gpu_without_mps_get_one_hint():
    hint = gpu_sharing_warning(Config(workers=16, gpu_ids=(0,)), mps=False)
    assert hint.startswith("16 workers share GPU 0 without the CUDA MPS daemon")
    assert "nvidia-cuda-mps-control -d" in hint
    assert gpu_sharing_warning(Config(workers=8, gpu_ids=(0, 1, 2, 3)), mps=False).startswith("2 workers share GPU 0")
    assert gpu_sharing_warning(Config(workers=16, gpu_ids=(0,)), mps=True) is None
    assert gpu_sharing_warning(Config(workers=2, gpu_ids=(0, 1)), mps=False) is None
    assert gpu_sharing_warning(Config(workers=16), mps=False) is None  # the CPU


def test_mps_is_seen_by_its_control_socket(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert not mps_running()
    with socket.socket(socket.AF_UNIX) as control:  # the socket that nvidia-cuda-mps-control -d makes
        control.bind(str(tmp_path / "control"))
        assert mps_running()


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
