"""settings.py: the flags generated from Config, the value checks, the seed plan (pure: no GPU needed)."""

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


def test_every_setting_but_the_host_s_place_is_a_flag_with_config_s_default():
    import os
    from dataclasses import fields

    from main import parse_config
    from settings import FLAGS

    assert list(FLAGS) == [f.name for f in fields(Config) if f.name not in ("host", "hosts")]
    assert parse_config([]) == Config(workers=os.cpu_count() or 1)
    cfg = parse_config(["--bf16", "--shared-optimizer", "False", "--gpu-ids", "0", "1", "--target-score", "18"])
    assert (cfg.bf16, cfg.shared_optimizer, cfg.gpu_ids, cfg.target_score) == (True, False, (0, 1), 18.0)


def test_a_value_outside_a_setting_s_choices_is_one_line_for_the_api_too():
    from settings import check_values
    from utils import UsageError

    for name, bad in (("optimizer", "SGD"), ("sync_op", "max"), ("mps", "sometimes")):
        flag = "--" + name.replace("_", "-")
        with pytest.raises(UsageError, match=f"^{flag} must be one of .*, got '{bad}'$"):
            check_values(replace(Config(), **{name: bad}))


def test_acting_without_autograd_is_checked_against_the_textbook_path_and_the_cpu():
    from main import parse_config
    from settings import check_values
    from utils import UsageError

    assert not Config().replays_convs
    assert parse_config(["--replay-convs"]).replays_convs and Config(cuda_graph=True).replays_convs
    check_values(Config(replay_convs=True))
    with pytest.raises(UsageError, match="^--textbook keeps each step's autograd graph; drop --replay-convs"):
        check_values(Config(textbook=True, replay_convs=True))
    with pytest.raises(UsageError, match="^--cuda-graph captures the acting forward on a GPU: pass --gpu-ids"):
        check_values(Config(cuda_graph=True))
