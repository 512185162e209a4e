"""Sweep files: named runs from lists and grids, per-run config errors kept, file errors named."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmgan.config import ConfigError
from cmgan.sweep import build_sweep, load_sweep
from cmgan.sweep.spec import grid_points

REPO = Path(__file__).resolve().parents[2]


def test_grid_is_the_cross_product_with_readable_names_and_typed_values(tmp_path):
    sweep = build_sweep({"grid": {"loss.cycle": [5, 10.5], "model.fusion": ["concat", "none"]}}, sweep_dir=tmp_path)
    assert [r.name for r in sweep.runs] == ["cycle-5_fusion-concat", "cycle-5_fusion-none",
                                            "cycle-10.5_fusion-concat", "cycle-10.5_fusion-none"]
    cfgs = {r.name: r.cfg for r in sweep.runs}
    assert cfgs["cycle-10.5_fusion-none"].loss.cycle == 10.5 and cfgs["cycle-10.5_fusion-none"].model.fusion == "none"
    assert all(r.cfg.train.run_dir == str(tmp_path / "runs" / r.name) for r in sweep.runs)


def test_grid_names_use_full_keys_when_last_parts_collide():
    ((name, _),) = grid_points({"model.width": [8], "model.disc_width": [4]})
    assert name == "width-8_disc_width-4"
    ((name, overrides),) = grid_points({"model.seg_width": [4], "x.seg_width": [2]})
    assert name == "model.seg_width-4_x.seg_width-2" and overrides == ["model.seg_width=4", "x.seg_width=2"]


def test_runs_crossed_with_a_grid_inherit_both_overrides_and_resources(tmp_path):
    sweep = build_sweep(
        {
            "overrides": ["train.steps=7"],
            "resources": {"time_min": 30},
            "runs": [{"name": "a", "overrides": ["loss.edge=0.0"], "resources": {"tasks_per_node": 2}}, {"name": "b"}],
            "grid": {"train.seed": [1, 2]},
        },
        sweep_dir=tmp_path,
    )
    assert [r.name for r in sweep.runs] == ["a_seed-1", "a_seed-2", "b_seed-1", "b_seed-2"]
    a1 = sweep.run("a_seed-1")
    assert (a1.cfg.train.steps, a1.cfg.loss.edge, a1.cfg.train.seed) == (7, 0.0, 1)
    assert a1.resources == {"time_min": 30, "tasks_per_node": 2}
    assert a1.variant == ("loss.edge=0.0", "train.seed=1")
    assert sweep.run("b_seed-2").resources == {"time_min": 30}


def test_an_invalid_run_config_is_kept_with_its_error_while_the_others_resolve(tmp_path):
    sweep = build_sweep({"runs": [{"name": "ok"}, {"name": "bad", "overrides": ["model.fusion=sideways"]}]},
                        sweep_dir=tmp_path)
    assert sweep.run("ok").cfg is not None and sweep.run("ok").error is None
    bad = sweep.run("bad")
    assert bad.cfg is None and "model.fusion='sideways'" in bad.error and "concat" in bad.error


@pytest.mark.parametrize(
    "data, message",
    [
        ({"runs": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"runs": [{"name": "a/b"}]}, "run name"),
        ({"grid": {"loss.edge": []}}, "non-empty list"),
        ({"runz": []}, "unknown key"),
        ({"runs": [{"name": "a", "override": []}]}, "unknown key"),
        ({"entry": "no_colon"}, "package.module:function"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"base": "missing.toml"}, "does not exist"),
    ],
)
def test_mistakes_in_a_sweep_file_are_errors_that_say_what_is_wrong(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        build_sweep(data, base_dir=tmp_path, sweep_dir=tmp_path)


def test_load_sweep_names_the_file_in_its_errors(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ConfigError, match="broken.toml"):
        load_sweep(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "nope.toml")


def test_shipped_sweeps_cover_the_papers_ablations_and_resolve_to_valid_configs(tmp_path):
    values = {}
    for path in sorted((REPO / "configs" / "sweeps").glob("*.toml")):
        sweep = load_sweep(path, sweep_dir=tmp_path / path.stem)
        assert sweep.runs and all(r.error is None for r in sweep.runs), path
        values[path.stem] = [r.cfg for r in sweep.runs]
    assert {c.model.fusion for c in values["fusion"]} == {"sigmoid", "concat"}
    assert {c.model.fusion for c in values["segmentation"]} == {"sigmoid", "none"}
    assert {c.model.disc_input for c in values["disc-input"]} == {"concat", "residual", "gate", "image"}
    assert {c.loss.edge > 0 for c in values["edge-loss"]} == {True, False}
    grid = {(c.loss.cycle, c.loss.edge) for c in values["loss-weights"]}
    assert len(grid) == 9 and (10.0, 10.0) in grid  # the paper's weights are one point of the grid


def test_seeds_repeat_every_run_as_its_own_named_run_with_its_seed_in_the_config(tmp_path):
    data = {"runs": [{"name": "a", "overrides": ["loss.edge=0.0"]}, {"name": "b"}, {"name": "c"}],
            "seeds": [0, 1], "reference": "b"}
    sweep = build_sweep(data, sweep_dir=tmp_path)
    assert [r.name for r in sweep.runs] == ["a-s0", "b-s0", "c-s0", "a-s1", "b-s1", "c-s1"]  # seed-major
    assert sweep.configs == ("a", "b", "c") and sweep.seeds == (0, 1) and sweep.reference == "b"
    assert {(r.config, r.seed, r.cfg.train.seed) for r in sweep.runs} == {
        (c, s, s) for c in "abc" for s in (0, 1)}
    assert len({r.run_dir for r in sweep.runs}) == 6 and sweep.run("a-s1").cfg.loss.edge == 0.0
    # The command line's seeds win; a count N means 0..N-1.
    again = build_sweep(data, sweep_dir=tmp_path, seeds="3")
    assert [r.seed for r in again.runs if r.config == "a"] == [0, 1, 2]
    assert [r.seed for r in build_sweep(data, sweep_dir=tmp_path, seeds="4, 9").runs][:2] == [4, 4]
    # Without seeds a run is its own configuration and keeps its name.
    plain = build_sweep({"runs": [{"name": "a"}]}, sweep_dir=tmp_path)
    assert [(r.name, r.config, r.seed) for r in plain.runs] == [("a", "a", None)] and plain.reference == "a"


@pytest.mark.parametrize("data, message", [
    ({"runs": [{"name": "a"}], "seeds": [1, 1]}, "repeats a seed"),
    ({"runs": [{"name": "a"}], "seeds": []}, "non-empty list"),
    ({"runs": [{"name": "a"}], "seeds": [-1]}, "integers >= 0"),
    ({"runs": [{"name": "a"}], "reference": "zz"}, "reference='zz' is not one of"),
])
def test_bad_seeds_and_references_are_named(data, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_sweep(data, sweep_dir=tmp_path)


def test_every_paper_table_sweep_loads_with_seeds_and_valid_configs():
    for name, configs in {"fusion": 2, "edge-loss": 2, "segmentation": 2, "disc-input": 4, "baselines": 3}.items():
        sweep = load_sweep(REPO / "configs" / "sweeps" / f"{name}.toml")
        assert len(sweep.configs) == configs and sweep.seeds == (0, 1, 2), name
        assert not [r.error for r in sweep.runs if r.error], name
        assert "Table" in (REPO / "configs" / "sweeps" / f"{name}.toml").read_text()
    base = load_sweep(REPO / "configs" / "sweeps" / "baselines.toml")
    cyc = base.run("cyclegan-s0").cfg
    assert (cyc.model.fusion, cyc.loss.edge, cyc.model.disc_input, cyc.loss.gray) == ("none", 0.0, "image", 0.0)
    ccg = base.run("colorcyclegan-s0").cfg
    assert (ccg.model.fusion, ccg.loss.edge, ccg.model.disc_input, ccg.loss.gray) == ("none", 0.0, "image", 10.0)
