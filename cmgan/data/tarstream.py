"""The raw sample stream of one training slot: its local tar shards read forever, each pass in a new seeded
order, every bad shard reported once and skipped.

    skipper = Skipper()
    for sample in raw_samples(urls, (seed, restarts, slot, domain), skipper, samples):
        ...  # {"__key__": str, "__url__": str, member: bytes} (undecoded; `cmgan.data.codec` decodes)
    skipper.drain()  # [(shard, first problem)] new since the last call; skipper.count: problems so far

The batch streams (`cmgan.data.pipeline`) run this inside each DataLoader worker and hand the skipper's notes to
the main process, which logs each shard's first problem once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_expander

from cmgan.data.splits import DataError


class Skipper:
    """Exception handler of one training stream (webdataset's `handler=`, and called with a message and the shard
    for samples that fail decoding or the schema): count the problem, note the first one of each shard, go on.

    It runs in a DataLoader worker and does not log there: `drain()` hands the new notes to the batch, and the
    main process logs each shard's first problem once (`cmgan.data.pipeline`). Logging in the worker would depend
    on how the worker came to be (a forked worker keeps the launcher's handlers, a spawned one has none, a test
    runner's capture handler is lost in it), and would repeat: a worker reads its shards again every pass, and
    several workers can meet the same shard. The main process logs through the launcher's own handler, once.
    """

    def __init__(self) -> None:
        self.count = 0
        self.url = "?"  # the shard being read (set by _open_files)
        self._noted: set[str] = set()
        self._new: list[tuple[str, str]] = []

    def __call__(self, exn: BaseException | str, url: str | None = None) -> bool:
        self.count += 1
        url = url or self.url
        if url not in self._noted:
            self._noted.add(url)
            if isinstance(exn, BaseException):  # webdataset appends " @ <file object>" and more args: drop them
                first = exn.args[0] if exn.args else None
                message = first.split(" @ <", 1)[0] if isinstance(first, str) else str(exn)
                exn = f"unreadable shard, rest of it skipped ({type(exn).__name__}: {message})"
            self._new.append((url, exn))
        return True

    def drain(self) -> list[tuple[str, str]]:
        """(shard, problem) of the shards that had their first problem since the last call."""
        new, self._new = self._new, []
        return new


def _open_files(src: Iterator[dict[str, Any]], handler: Skipper) -> Iterator[dict[str, Any]]:
    """Open local shard files (never through webdataset's gopen, which runs `pipe:` commands). Tells `handler`
    which shard is being read: webdataset's tar errors do not name it in a usable form."""
    for item in src:
        handler.url = item["url"]
        try:
            f = open(item["url"], "rb")
        except OSError as e:
            if handler(e):
                continue
            raise
        with f:
            yield {**item, "stream": f}


def raw_samples(urls: list[str], seed: tuple[int, ...], handler: Skipper,
                samples: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples ({"__key__", "__url__", member: bytes}) of `urls` forever, each pass in a new seeded order.

    samples: the manifest's sample count of each shard; a shard that ends early is reported to `handler` (tarfile
    ends silently at a header cut short, so a truncated shard can read as a shorter one without an error).
    DataError when a whole pass yields no sample (every shard unreadable)."""

    def check(url: str | None, n: int) -> None:
        if url is not None and samples and n < samples.get(url, 0):
            handler(f"truncated shard: it ends after {n} of its {samples[url]} samples", url)

    epoch = 0
    while True:
        order = ({"url": urls[i]} for i in np.random.default_rng([*seed, epoch]).permutation(len(urls)))
        files = tar_file_expander(_open_files(order, handler), handler=handler)
        n, url, in_shard = 0, None, 0
        for sample in group_by_keys(files, handler=handler):
            if sample.get("__url__") != url:
                check(url, in_shard)
                url, in_shard = sample.get("__url__"), 0
            in_shard += 1
            n += 1
            yield sample
        check(url, in_shard)
        if n == 0:
            raise DataError(f"no readable sample in any of the shards {urls}")
        epoch += 1
