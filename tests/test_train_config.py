"""Training configs: every shipped recipe loads, inheritance, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xmask.train.config import ConfigError, TrainConfig, load_config, shipped_recipes, to_yaml


def test_every_shipped_recipe_loads() -> None:
    names = shipped_recipes()
    for dataset in ("sha", "ucf", "jhu"):
        for percent in (5, 10, 40):
            assert f"{dataset}-{percent}-gpu" in names
    for dataset in ("sha", "shb"):
        for percent in (5, 10, 40):
            assert f"{dataset}-{percent}-cpu" in names
    for name in names:
        cfg = load_config(name)
        stages = [n for n in (4, 3, 2) if f"stage{n}" in name]
        assert cfg.stage == (stages[0] if stages else 1)
        assert isinstance(cfg, TrainConfig)
        if name == "shanghaitech-cpu-pipeline":  # the shipped model's: every image labeled
            assert cfg.data.labeled == "all" and not cfg.pipeline.baseline
            assert cfg.calibrate_two_regimes and cfg.model.neck_channels == 192
        elif name == "shanghaitech-robust-cpu-pipeline":  # 60 held-out images, rescale ×0.5–×2
            assert cfg.data.labeled == "all" and cfg.data.validation == "shanghaitech-val"
            assert cfg.augment.scale_log_uniform and cfg.augment.labeled_photometric_p > 0
        elif name == "shanghaitech-robust-finetune-cpu-pipeline":  # from the shipped counter
            assert cfg.init == "shanghaitech-lite0" and cfg.pipeline.stage3 is None
            assert cfg.pipeline.stage4 == ["stage4-cpu"] and cfg.augment.scale_log_uniform
        elif name.endswith("-pipeline"):
            assert cfg.pipeline.stage3 == ["stage3-cpu"] and cfg.pipeline.baseline
            assert cfg.name == name and cfg.data.labeled == name.removesuffix("-cpu-pipeline")
        if name.endswith("-gpu") and name not in ("paper-gpu", "stage2-gpu", "stage3-gpu"):
            assert cfg.model.backbone == "vgg16_bn" and cfg.schedule.epochs == 1500
            assert cfg.name == name and cfg.data.labeled == name.removesuffix("-gpu")
        layers = ("stage2-cpu", "stage3-cpu", "stage4-cpu", "pipeline-cpu", "robust-cpu")
        if name.endswith("-cpu") and name not in layers:
            assert cfg.model.backbone == "efficientnet_lite0" and cfg.name == name


def test_paper_constants_per_recipe() -> None:
    assert load_config("ucf-10-gpu").optim.weight_decay == 5e-4
    assert load_config("ucf-40-gpu").optim.weight_decay == 1e-5
    assert load_config("jhu-5-gpu").optim.weight_decay == 1e-6
    assert load_config("sha-5-gpu").optim.weight_decay == 1e-4
    assert load_config("ucf-5-gpu").data.max_short_side == 1536
    assert load_config("jhu-40-gpu").data.max_short_side == 2048
    default = TrainConfig()
    assert (default.teacher.momentum, default.teacher.warmup_epochs) == (0.998, 50)
    assert (default.optim.lr, default.optim.backbone_lr, default.optim.grad_clip) == (5e-5, 1e-5, 5)
    assert (default.p2r.min_radius, default.p2r.max_radius, default.p2r.cost_point) == (8, 96, 8)


def test_user_recipe_inherits_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("base: shb-40-cpu\nname: mine\nschedule:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "mine.yaml", ["optim.lr=0.001", "data.validation=val.txt"])
    assert (cfg.name, cfg.schedule.epochs, cfg.optim.lr) == ("mine", 7, 0.001)
    assert cfg.data.labeled == "shb-40" and cfg.data.validation == "val.txt"
    (tmp_path / "saved.yaml").write_text(to_yaml(cfg))
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_stage2_recipes_layer_over_stage1() -> None:
    cfg = load_config("shb-40-cpu-stage2", ["out=/tmp/elsewhere"])
    assert (cfg.stage, cfg.name, cfg.data.labeled) == (2, "shb-40-cpu-stage2", "shb-40")
    assert cfg.mask.init == "/tmp/elsewhere/shb-40-cpu"  # follows `out`
    assert cfg.model.backbone == "efficientnet_lite0" and cfg.mask.trainable == ["mask_head"]
    layered = load_config(["sha-40-gpu", "stage2-gpu"], ["mask.init=runs/sha-40-gpu"])
    assert (layered.stage, layered.name, layered.schedule.epochs) == (2, "sha-40-gpu", 500)
    assert (layered.optim.lr, layered.teacher.warmup_epochs) == (5e-6, 50)
    assert layered.data.labeled == "sha-40" and layered.model.backbone == "vgg16_bn"
    default = TrainConfig().mask
    assert (default.loss.tau, default.loss.delta, default.loss.margin) == (0.6, 0.1, 0.7)
    assert (default.pseudo.lam, default.pseudo.tau_g, default.p_low, default.p_high) == (
        0.6,
        0.8,
        0.1,
        0.95,
    )
    assert (default.kernel, default.sigma, default.ignore_radius) == (7, 1.5, 16.0)


def test_base_list_merges_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\nschedule:\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("schedule:\n  epochs: 4\n  steps_per_epoch: 9\n")
    (tmp_path / "c.yaml").write_text("base: [a.yaml, b.yaml]\nseed: 1\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.name, cfg.schedule.epochs, cfg.schedule.steps_per_epoch, cfg.seed) == (
        "a",
        4,
        9,
        1,
    )
    with pytest.raises(ConfigError, match="b-missing"):
        load_config([tmp_path / "a.yaml", "b-missing"])


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [(["schedule.epochz=3"], "invalid configuration"), (["schedule.epochs=many"], "invalid")],
)
def test_bad_overrides(overrides: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_config("shb-40-cpu", overrides)


def test_bad_recipe_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such recipe"):
        load_config("nope-recipe")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
