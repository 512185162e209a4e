"""The fault campaign of bench/faults.py, small: two trials (one rank, then two ranks under torchrun), each stopped
2-3 times by real signals in real processes (the first trial's first stop is a SIGKILL) and resumed in new
processes; both must end bit-identical to the uninterrupted run of their world size."""

from __future__ import annotations

import pytest

from tests.scripts import load_script

from .conftest import REPO

pytestmark = pytest.mark.slow


def load_faults():
    return load_script(REPO / "bench" / "faults.py", "bench_faults")


def test_two_fault_trials_with_a_sigkill_resume_bit_exact_in_fresh_processes(demo_shards, tmp_path):
    faults = load_faults()
    setup = faults.Setup(demo_shards / "mr", demo_shards / "color", steps=6, ckpt_every=2)
    result = faults.campaign(setup, tmp_path, trials=2, seed=1, world_sizes=(1, 2),
                             force_first=("SIGKILL", "SIGTERM"))
    assert result["trials"] == 2 and result["world_sizes"] == [1, 2]
    first = result["details"][0]["interruptions"]
    assert first[0]["signal"] == "SIGKILL" and first[0]["exit"] == -9
    assert first[1]["signal"] == "SIGTERM" and first[1]["exit"] in (75, 0)  # 0: it completed before the signal
    for trial in result["details"]:
        assert len(trial["interruptions"]) >= 1
        assert trial["bit_exact"], trial
    assert result["bit_exact"] == 2 and result["max_abs_diff"] == 0.0


def test_the_comparison_sees_a_difference(demo_shards, tmp_path):
    # compare() is what declares "bit-exact": it must notice one changed parameter.
    faults = load_faults()
    setup = faults.Setup(demo_shards / "mr", demo_shards / "color", steps=2, ckpt_every=2)
    faults.run_to_end(setup, tmp_path, 1, True)
    a = faults.final_state(tmp_path, 1, 2)
    b = faults.final_state(tmp_path, 1, 2)
    assert faults.compare(a, b)["bit_exact"]
    name, tensor = next(iter(b["replicated"]["generators"]["nets"]["G"].items()))
    tensor.view(-1)[0] += 1e-3
    diff = faults.compare(a, b)
    assert not diff["bit_exact"] and diff["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert any(name in d for d in diff["differing"])
