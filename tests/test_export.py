"""cmgan.export: the self-contained generator export loaded by the evaluator and the colorizer."""

import pytest
import torch

from cmgan.config import ModelConfig
from cmgan.export import ExportError, load_export, resolve_export_path, save_export
from cmgan.models import build_generator, build_segmenter

TINY = ModelConfig(image_size=32, width=8, seg_width=8, seg_depth=2, disc_width=8)
NORM = {"lower_percentile": 0.5, "upper_percentile": 99.5}


def _write(path, model_cfg=TINY, ema=False, seed=0):
    torch.manual_seed(seed)
    G, S = build_generator(model_cfg), build_segmenter(model_cfg)
    ema_state = {k: v + 0.01 if v.is_floating_point() else v for k, v in G.state_dict().items()} if ema else None
    save_export(path, model_cfg=model_cfg, generator_state=G.state_dict(), ema_state=ema_state,
                segmenter_state=S.state_dict(), normalization=NORM, meta={"step": 7})
    return G.eval(), S.eval()


def test_colorize_equals_a_direct_call_of_s_then_g(tmp_path):
    G, S = _write(tmp_path / "export" / "generator.pt")
    export = load_export(tmp_path, autocast=None)  # a run directory resolves to its export
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        direct = G(x, S.features(x))
    out = export.colorize(x)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, direct.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    assert export.normalization == NORM and export.meta == {"step": 7}


def test_ema_weights_are_used_when_present_and_requested(tmp_path):
    _write(tmp_path / "g.pt", ema=True)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    plain = load_export(tmp_path / "g.pt", use_ema=False, autocast=None)
    ema = load_export(tmp_path / "g.pt", use_ema=True, autocast=None)
    assert ema.uses_ema and not plain.uses_ema
    assert not torch.allclose(plain.colorize(x), ema.colorize(x))


def test_model_id_changes_with_the_weights(tmp_path):
    _write(tmp_path / "a.pt", seed=0)
    _write(tmp_path / "b.pt", seed=1)
    _write(tmp_path / "c.pt", seed=0)
    ids = [load_export(tmp_path / f"{n}.pt").model_id for n in "abc"]
    assert ids[0] != ids[1] and ids[0] == ids[2]


def test_bad_exports_name_the_file(tmp_path):
    with pytest.raises(ExportError, match="no generator export"):
        resolve_export_path(tmp_path / "missing")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ExportError, match="bad.pt"):
        load_export(bad)
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ExportError, match="not a cmgan-export-v1"):
        load_export(tmp_path / "other.pt")


def test_fusion_needs_the_segmenter_in_the_export(tmp_path):
    G = build_generator(TINY)
    with pytest.raises(ExportError, match="segmenter"):
        save_export(tmp_path / "g.pt", model_cfg=TINY, generator_state=G.state_dict(), normalization=NORM, meta={})


def test_colorize_rejects_color_input(tmp_path):
    _write(tmp_path / "g.pt")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        load_export(tmp_path / "g.pt").colorize(torch.zeros(1, 3, 32, 32))


def test_weights_that_do_not_fit_the_model_config_name_the_file(tmp_path):
    G = build_generator(TINY)
    state = {k: v for k, v in G.state_dict().items() if "up" not in k and "out" not in k}  # a truncated G
    save_export(tmp_path / "g.pt", model_cfg=ModelConfig(image_size=32, width=8, seg_width=8, seg_depth=2,
                                                         fusion="none"),
                generator_state=state, normalization=NORM, meta={})
    with pytest.raises(ExportError, match="g.pt.*do not fit"):
        load_export(tmp_path / "g.pt")
