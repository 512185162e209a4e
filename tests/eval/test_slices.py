"""The evaluator's reader deals every slice of a split exactly once, in batch-aligned rank shares."""

from __future__ import annotations

import numpy as np
import pytest

from cmgan.data.splits import read_split
from cmgan.eval import slices


@pytest.mark.parametrize("n,world,batch", [(19, 2, 4), (19, 3, 4), (7, 4, 4), (0, 2, 4), (33, 5, 1)])
def test_batch_ranges_cover_the_split_once_and_start_on_batch_boundaries(n, world, batch):
    ranges = [slices.batch_range(n, r, world, batch) for r in range(world)]
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    assert all(a % batch == 0 or a == n for a, _ in ranges)


def test_rank_shares_together_are_read_split_in_order(demo_shards):
    mr = demo_shards / "mr"
    whole = [s["__key__"] for s in read_split(mr, "test")]
    for world in (1, 2, 3):
        dealt = [s["__key__"] for r in range(world) for s in slices.read_samples(mr, "test", r, world,
                                                                                  slices.MR_MEMBERS, 4)]
        assert dealt == whole
    first = next(iter(slices.read_samples(mr, "test", 0, 1, slices.MR_MEMBERS, 4)))
    assert set(first) == {"__key__", *slices.MR_MEMBERS}  # the demo's test split carries truth and labels
    limited = [s["__key__"] for r in range(2) for s in slices.read_samples(mr, "test", r, 2, slices.MR_MEMBERS, 4,
                                                                            limit=5)]
    assert limited == whole[:5]


def test_batches_keep_slices_together_with_their_masks_labels_and_truth(demo_shards):
    samples = list(slices.read_samples(demo_shards / "mr", "test", 0, 1, slices.MR_MEMBERS, 4))
    batches = list(slices.mr_batches(samples, 4))
    sizes = [len(b.keys) for b in batches]
    assert sum(sizes) == len(samples) and all(n == 4 for n in sizes[:-1]) and 0 < sizes[-1] <= 4
    b = batches[0]
    assert b.mr.shape == (4, 1, 32, 32) and b.truth.shape == (4, 32, 32, 3) and b.label.shape == (4, 32, 32)
    np.testing.assert_array_equal(b.mr[1, 0].numpy(), samples[1]["mr.npy"].astype(np.float32))
    assert b.subjects[0] == samples[0]["meta.json"]["subject"]


def test_a_missing_split_is_refused_naming_it(demo_shards):
    with pytest.raises(ValueError, match="no shards in split 'test'"):
        list(slices.read_samples(demo_shards / "color", "test", 0, 1, ("rgb.npy",), 4))


def test_swapped_domains_are_refused_naming_the_directory(demo_shards, fid_weights):
    from cmgan.config import EvalConfig
    from cmgan.eval import evaluator, reference

    cfg = EvalConfig(inception_weights=str(fid_weights), fid_dims=64)
    with pytest.raises(ValueError, match="color.*holds the 'color' domain; evaluation colorizes MR shards"):
        evaluator.evaluate(None, demo_shards / "color", None, cfg)
    model, _ = reference.load_fid_model(cfg)
    with pytest.raises(ValueError, match="mr.*holds the 'mr' domain; FID's reference must be the color shards"):
        reference.real_statistics(demo_shards / "mr", model, cfg)


def test_an_unreadable_shard_is_an_error_naming_it(demo_shards, tmp_path):
    import shutil

    broken = tmp_path / "mr"
    shutil.copytree(demo_shards / "mr", broken)
    test_shard = sorted(broken.glob("test-*.tar"))[0]
    test_shard.write_bytes(test_shard.read_bytes()[:700])  # cut inside the first member
    with pytest.raises(ValueError, match=f"{test_shard.name}: unreadable shard"):
        list(slices.read_samples(broken, "test", 0, 1, slices.MR_MEMBERS, 4))
