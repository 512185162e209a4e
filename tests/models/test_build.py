"""cmgan.models.build_networks / build_segmenter follow ModelConfig; bad values are ConfigErrors."""

import pytest

from cmgan.config import ConfigError, ModelConfig, load_config
from cmgan.models import build_networks, build_segmenter


def test_networks_follow_the_config():
    cfg = ModelConfig(
        image_size=32, width=8, seg_width=4, disc_width=4, fusion="concat", disc_input="gate", laplacian="8"
    )
    nets = build_networks(cfg)
    assert (nets.G.in_channels, nets.G.out_channels, nets.G.fusion) == (1, 3, "concat")
    assert (nets.F.in_channels, nets.F.out_channels, nets.F.fusion) == (3, 1, "none")
    assert (nets.Dx.in_channels, nets.Dy.in_channels) == (1, 3)
    assert nets.Dy.input_mode == "gate" and nets.Dy.laplacian == "8"
    s = build_segmenter(cfg)
    assert s.feature_channels == nets.G.seg_channels == 8 and s.num_classes == 5


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.fusion=add", ["model.fusion", "sigmoid", "concat", "none"]),
        ("model.disc_input=edges", ["model.disc_input", "concat", "residual", "gate", "image"]),
        ("model.laplacian='6'", ["model.laplacian", "'4'", "'8'"]),
        ("model.image_size=100", ["model.image_size", "divisible"]),
        ("model.width=0", ["model.width", "> 0"]),
    ],
)
def test_bad_model_values_raise_config_errors_naming_field_and_choices(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("name", ["cycle", "identity", "edge", "gray", "adversarial", "disc_x"])
def test_negative_loss_weights_raise_config_errors(name):
    with pytest.raises(ConfigError, match=f"loss.{name}=-1.0 must be >= 0"):
        load_config(None, [f"loss.{name}=-1"])
