"""The seeded shuffle buffer of the training streams (cmgan.data.shuffle)."""

import random
from itertools import count, islice

import pytest

from cmgan.data.shuffle import shuffle_buffer


def test_shuffle_buffer_is_a_permutation_of_a_finite_input():
    out = list(shuffle_buffer(range(100), 16, random.Random(0)))
    assert sorted(out) == list(range(100))
    assert out != list(range(100))


def test_shuffle_buffer_order_depends_only_on_the_seed():
    a = list(shuffle_buffer(range(200), 32, random.Random("seed-a")))
    assert a == list(shuffle_buffer(iter(range(200)), 32, random.Random("seed-a")))
    assert a != list(shuffle_buffer(range(200), 32, random.Random("seed-b")))


@pytest.mark.parametrize("bufsize", [0, 1])
def test_shuffle_buffer_of_one_keeps_the_order(bufsize):
    assert list(shuffle_buffer(range(10), bufsize, random.Random(0))) == list(range(10))


def test_shuffle_buffer_streams_an_endless_input_holding_at_most_bufsize_items():
    read = []

    def source():
        for i in count():
            read.append(i)
            yield i

    out = list(islice(shuffle_buffer(source(), 8, random.Random(1)), 50))
    assert len(set(out)) == 50
    assert len(read) - len(out) <= 8  # what was read and not yet emitted sits in the buffer
    assert all(item < position + 8 for position, item in enumerate(out))  # no item from further ahead


def test_shuffle_buffer_replays_from_a_count_as_exact_resume_does():
    """Exact resume skips the `n` items a worker already took: the rest equals the uninterrupted order."""
    full = list(islice(shuffle_buffer(count(), 16, random.Random("s")), 120))
    resumed = shuffle_buffer(count(), 16, random.Random("s"))
    for _ in range(70):
        next(resumed)
    assert list(islice(resumed, 50)) == full[70:]


def test_shuffle_buffer_draws_as_webdataset_did():
    """Runs checkpointed while the stream used webdataset's private shuffle resume exactly with ours."""
    filters = pytest.importorskip("webdataset.filters")
    if not hasattr(filters, "_shuffle"):
        pytest.skip("this webdataset has no filters._shuffle to compare with")
    ours = list(shuffle_buffer(range(300), 24, random.Random("x")))
    theirs = list(filters._shuffle(iter(range(300)), bufsize=24, initial=24, rng=random.Random("x")))
    assert ours == theirs
