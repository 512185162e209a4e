"""`train.precision=auto` becomes one concrete precision, chosen by what the hardware computes natively."""

from __future__ import annotations

import pytest
import torch

from cmgan import precision
from cmgan.config import load_config
from cmgan.train.distributed import setup


def test_explicit_precisions_pass_through_and_unknown_ones_are_refused():
    for p in ("fp32", "bf16", "fp16"):
        assert precision.resolve(p, "cpu") == p
    with pytest.raises(ValueError, match="fp8"):
        precision.resolve("fp8", "cpu")


def test_auto_on_the_cpu_is_bf16_only_where_onednn_runs_bf16_natively():
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert precision.resolve("auto", "cpu") == ("bf16" if native else "fp32")


def test_auto_never_picks_fp16_where_the_backend_cannot_scale_it():
    assert precision.resolve("auto", "cpu", fp16_ok=False) in ("fp32", "bf16")


def test_the_backend_reports_the_concrete_precision_and_autocast_dtype():
    backend = setup(load_config(None, ["train.precision=auto"]).train, batch_size=1)
    try:
        assert backend.train.precision in ("fp32", "bf16")
        assert backend.train.precision == precision.resolve("auto", backend.device.type)
        assert backend.amp_dtype == precision.DTYPES[backend.train.precision]
        assert "precision auto" not in backend.describe()
    finally:
        backend.close()
