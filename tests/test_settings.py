"""settings.py: the seed plan (pure: no GPU needed)."""

from dataclasses import replace

import pytest

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
