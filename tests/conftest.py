import pytest


@pytest.fixture
def run_dirs(tmp_path):
    """Fresh log and model directories, as main.py flags."""
    logs, models = tmp_path / "logs", tmp_path / "models"
    return {
        "logs": logs,
        "models": models,
        "flags": ["--log-dir", logs, "--save-model-dir", models, "--load-model-dir", models],
    }
