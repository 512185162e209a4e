"""cmgan.config: defaults from docs/method.md, TOML + dotted overrides, errors that name the field and the fix."""

import json
import tomllib
from pathlib import Path

import pytest

from cmgan.config import ConfigError, RunConfig, dumps_json, dumps_toml, load_config, replace, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_papers_constants():
    cfg = RunConfig()
    model = cfg.model
    assert (model.image_size, model.width, model.fusion, model.disc_input) == (256, 64, "sigmoid", "concat")
    assert (cfg.loss.cycle, cfg.loss.identity, cfg.loss.gray, cfg.loss.edge, cfg.loss.adversarial) == (10, 5, 10, 10, 1)
    assert cfg.loss.disc_x == cfg.loss.disc_y == 0.5 and cfg.loss.pool_size == 50
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.5, 0.999)


def test_dotted_overrides_parse_toml_literals_and_bare_words():
    cfg = load_config(None, ["loss.cycle=5", "train.precision=fp32", "optim.betas=[0.9, 0.99]", "train.compile=true"])
    assert cfg.loss.cycle == 5.0 and isinstance(cfg.loss.cycle, float)
    assert cfg.train.precision == "fp32"
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.train.compile is True


def test_demo_config_includes_base_and_overrides_it(tmp_path):
    cfg = load_config(CONFIGS / "demo.toml", ["train.run_dir=" + str(tmp_path)])
    assert cfg.model.image_size == 64 and cfg.model.fusion == "sigmoid"
    assert cfg.train.run_dir == str(tmp_path)


def test_resolved_config_round_trips_through_toml_and_json(tmp_path):
    cfg = load_config(CONFIGS / "demo.toml", ["loss.edge=0"])
    save_config(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg
    assert json.loads(dumps_json(cfg))["loss"]["edge"] == 0.0
    assert tomllib.loads(dumps_toml(cfg))["model"]["width"] == cfg.model.width


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.fusion=gated", ["model.fusion", "sigmoid", "concat", "none"]),
        ("model.disc_input=edges", ["model.disc_input", "concat", "residual", "gate", "image"]),
        ("model.image_size=100", ["model.image_size", "divisible"]),
        ("loss.cycle=-1", ["loss.cycle", ">= 0"]),
        ("train.precision=fp8", ["train.precision", "bf16"]),
        ("train.compile_backend=cudagraphs", ["train.compile_backend", "inductor", "aot_eager"]),
        ("loss.cylce=3", ["cylce", "cycle"]),
        ("train.steps=ten", ["train.steps", "integer"]),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for word in words:
        assert word in str(err.value)


def test_replace_validates_again():
    cfg = RunConfig()
    assert replace(cfg, ["model.width=8"]).model.width == 8
    with pytest.raises(ConfigError, match="model.fusion"):
        replace(cfg, ["model.fusion=bogus"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_choice_fields_accept_exactly_the_keys_of_the_registries_that_implement_them():
    from cmgan.data.pipeline import RESUME_MODES
    from cmgan.eval.structure import SSIM_KERNELS
    from cmgan.models.discriminator import DISC_INPUT
    from cmgan.models.edges import LAPLACIAN_KERNELS
    from cmgan.models.generator import FUSION

    registries = {"model.fusion": FUSION, "model.disc_input": DISC_INPUT, "model.laplacian": LAPLACIAN_KERNELS,
                  "data.resume": RESUME_MODES, "eval.ssim_kernel": SSIM_KERNELS}
    for name, registry in registries.items():
        section, key = name.split(".")
        for value in registry:
            assert getattr(getattr(load_config(None, [f'{name}="{value}"']), section), key) == value
        with pytest.raises(ConfigError, match=rf"{name}='nope' is not valid; choose one of \[.*\]") as e:
            load_config(None, [f'{name}="nope"'])
        assert str(e.value).endswith(str(list(registry)))
