"""Device placement hints of settings.py (pure: no GPU needed)."""

import socket

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
