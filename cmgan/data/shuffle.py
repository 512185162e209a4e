"""The seeded shuffle buffer of the training streams.

webdataset's algorithm (fill the buffer two items per input until it holds `bufsize`, then emit a uniformly
drawn item per input and drain at the end), written here with its public behaviour and no dependency on
webdataset's private `filters._shuffle`, whose signature changes between versions. The order depends only on
the input and `rng`, so a stream is reproducible from its seed, and exact resume can replay it: the checkpoint
stores how many items a worker took from the buffer, and the same seed and input give the same items again.
Keep the draws as they are: changing them changes the order, so checkpoints taken before the change would no
longer resume exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def _pick(buf: list[T], rng: random.Random) -> T:
    """Remove and return a uniformly drawn item (swap with the last, pop: O(1))."""
    k = rng.randint(0, len(buf) - 1)
    item = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return item


def shuffle_buffer(src: Iterable[T], bufsize: int, rng: random.Random) -> Iterator[T]:
    """Items of `src` in a shuffled order drawn from `rng`, holding at most `bufsize` items; bufsize <= 1 keeps
    the order. Works on endless iterators (an item is emitted per item read once the buffer is full)."""
    it = iter(src)
    if bufsize <= 1:
        yield from it
        return
    buf: list[T] = []
    for item in it:
        buf.append(item)
        if len(buf) < bufsize:  # fill faster at the start: a second item per item read
            try:
                buf.append(next(it))
            except StopIteration:
                pass
        if len(buf) >= bufsize:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)
