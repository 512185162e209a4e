import random

import numpy as np
import torch
from torch import nn

from cmgan.train.state import capture_rng, parameter_digest, rank_seed, restore_rng


def draw() -> tuple:
    return random.random(), float(np.random.rand()), np.random.normal(), float(torch.rand(()))


def test_rng_state_survives_weights_only_loading_and_replays_every_stream(tmp_path):
    random.seed(1)
    np.random.seed(1)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    torch.manual_seed(1)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    expected = [draw() for _ in range(3)]
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert [draw() for _ in range(3)] == expected


def test_rank_seeds_differ_across_ranks_and_streams_but_repeat():
    seeds = {rank_seed(0, r, s) for r in range(4) for s in range(3)}
    assert len(seeds) == 12
    assert rank_seed(5, 1, 2) == rank_seed(5, 1, 2)


def test_parameter_digest_sees_a_single_changed_value_and_ignores_memory_format():
    a = nn.Conv2d(4, 8, 1)
    b = nn.Conv2d(4, 8, 1)
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    assert parameter_digest([a]) == parameter_digest([b])
    with torch.no_grad():
        b.weight[0, 0, 0, 0] += 1e-7
    assert parameter_digest([a]) != parameter_digest([b])
