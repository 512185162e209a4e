"""Private APIs of dependencies that cmgan still relies on (no public equivalent), pinned: a new torch,
pytorch-fid or submitit that changes them fails here, naming what changed, instead of deep inside a model build
or a sweep that cannot read its jobs' results."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def test_torch_spectral_norm_parametrization_keeps_the_constructor_forward_and_state_cmgan_uses():
    from torch.nn.utils.parametrizations import _SpectralNorm

    params = list(inspect.signature(_SpectralNorm.__init__).parameters)
    assert params[:5] == ["self", "weight", "n_power_iterations", "dim", "eps"], params
    assert list(inspect.signature(_SpectralNorm.forward).parameters) == ["self", "weight"]
    sn = _SpectralNorm(torch.randn(8, 4, 3, 3), 1, 0, 1e-12)
    assert sn._u.shape == (8,) and sn._v.shape == (36,)  # cmgan.models.layers reads `_u`'s dtype


def test_cmgan_spectral_norm_equals_torchs_public_one_in_training_and_eval():
    from cmgan.models.layers import spectral_norm

    torch.manual_seed(0)
    ours = spectral_norm(nn.Conv2d(4, 8, 3))
    torch.manual_seed(0)
    theirs = torch.nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 8, 3))
    theirs.load_state_dict(ours.state_dict())
    for train in (True, True, False):
        ours.train(train), theirs.train(train)
        torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)


def test_pytorch_fid_inception_builder_and_blocks_cmgan_assembles_the_fid_network_from():
    from pytorch_fid import inception as pfi

    from cmgan.eval.inception import build_backbone

    assert {64, 192, 768, 2048} <= set(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)
    for block in ("FIDInceptionA", "FIDInceptionC", "FIDInceptionE_1", "FIDInceptionE_2"):
        assert isinstance(getattr(pfi, block), type), block
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    assert net.fc.out_features == 1008 and not net.aux_logits
    fid_net = build_backbone()
    assert isinstance(fid_net.Mixed_5b, pfi.FIDInceptionA) and isinstance(fid_net.Mixed_7c, pfi.FIDInceptionE_2)


def test_submitit_job_files_and_signal_setting_the_sweep_scheduler_reads():
    # cmgan.sweep.scheduler reads a job's result and log from its folder and id alone (a new process reattaches to
    # jobs an earlier one submitted), through submitit's own path rules; cmgan.cluster sets the requeue signal.
    from submitit import JobEnvironment
    from submitit.core.utils import JobPaths, pickle_load

    params = list(inspect.signature(JobPaths.__init__).parameters)
    assert params[:4] == ["self", "folder", "job_id", "task_id"], params
    paths = JobPaths("/tmp/sweep/submitit/%j", job_id="123", task_id=0)
    assert paths.result_pickle.name == "123_0_result.pkl" and paths.stderr.name == "123_0_log.err"
    assert str(paths.result_pickle.parent) == "/tmp/sweep/submitit/123"
    assert list(inspect.signature(pickle_load).parameters) == ["filename"]
    assert isinstance(JobEnvironment.USR_SIG, str) and JobEnvironment.USR_SIG.startswith("USR")
