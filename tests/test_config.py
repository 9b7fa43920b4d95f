from pathlib import Path

import pytest
import yaml

from textgan.config import apply_overrides, build_config, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_loads_and_binds(path):
    cfg = load_recipe(path)
    assert cfg.algorithm in ("mle", "relgan", "seqgan", "vae")
    assert cfg.description, f"{path} has no description"
    text = path.read_text()
    assert text.startswith("#") and "textgan train" in text and "accelerate launch" in text


def _raw(**extra):
    raw = {"algorithm": "mle", "data": {"name": "oracle"}, "generator": {"name": "lstm"}}
    raw.update(extra)
    return raw


def test_overrides_and_types():
    raw = apply_overrides(_raw(), ["train.steps=7", "train.lr=1e-3", "data.seed=4",
                                   "generator.hidden_dim=16", "eval.bleu=[2,3]"])
    cfg = build_config(raw)
    assert cfg.train.steps == 7 and cfg.train.lr == 1e-3 and cfg.data.seed == 4
    assert cfg.generator["hidden_dim"] == 16 and cfg.eval.bleu == [2, 3]
    assert isinstance(build_config(apply_overrides(_raw(), ["train.lr=1"])).train.lr, float)


@pytest.mark.parametrize("text", ["no", "'no'", "No", "false"])
def test_mixed_precision_no_survives_yaml_booleans(text):
    # YAML 1.1 reads an unquoted `no` as False; for mixed_precision that can only mean "no"
    cfg = build_config(apply_overrides(_raw(), [f"accelerate.mixed_precision={text}"]))
    assert cfg.accelerate == {"mixed_precision": "no"}
    recipe = build_config(yaml.safe_load(
        "algorithm: mle\ndata: {name: oracle}\ngenerator: {name: lstm}\n"
        f"accelerate: {{mixed_precision: {text}}}\n"))
    assert recipe.accelerate == {"mixed_precision": "no"}


@pytest.mark.parametrize("override, message", [
    ("train.step=5", r"unknown recipe key 'train.step'.*'train.steps'"),
    ("train.steps=abc", r"`train.steps` must be of type int, got str"),
    ("data.sed=1", r"'data.seed'"),
    ("generator.hiden_dim=3", r"generator.hiden_dim.*hidden_dim"),
    ("generator.name=lstmm", r"unknown generator 'lstmm'.*did you mean 'lstm'"),
    ("sampler.tau=0", r"`sampler.tau` must be > 0, got 0"),
    ("sampler.beta_max=0.5", r"beta_max.*>= 1"),
    ("sampler.schedule=expo", r"did you mean 'exp'"),
    ("algorithm=relgann", r"did you mean 'relgan'"),
    ("outputdir=x", r"unknown recipe key 'outputdir'.*output_dir"),
    ("train.steps", r"key=value"),
])
def test_bad_keys_and_values(override, message):
    with pytest.raises(ValueError, match=message):
        build_config(apply_overrides(_raw(), [override]))


def test_saved_config_round_trips(tmp_path):
    from textgan.config import save_config

    cfg = load_recipe(REPO / "recipes" / "mle" / "oracle.yaml", ["train.steps=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = build_config(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg


def test_schedule_horizon_defaults_to_the_run_and_can_be_fixed():
    """``sampler.schedule_steps`` is N of the beta schedule: unset, beta reaches beta_max at the
    run's last step; RelGAN's code fixes N = 5000, so 3,000 iterations end at beta_max ** 0.6."""
    from textgan.config import SamplerConfig

    run = SamplerConfig(schedule="exp", beta_max=100.0).tau_schedule(3000)
    assert run(0) == 1.0 and run(3000) == 100.0 ** -1 and run(1500) == 100.0 ** -0.5
    fixed = SamplerConfig(schedule="exp", beta_max=100.0, schedule_steps=5000).tau_schedule(3000)
    assert fixed(0) == 1.0 and fixed(3000) == 100.0 ** -0.6 and fixed(2500) == 100.0 ** -0.5
    lin = SamplerConfig(schedule="lin", beta_max=10.0, schedule_steps=10).tau_schedule(4)
    assert lin(9) == 0.1 and lin(3) == 1 / 4.0
    # horizons shorter than the run matter only to schedules that grow beta
    assert SamplerConfig(schedule="no", beta_max=5.0, schedule_steps=2).tau_schedule(9)(7) == 0.2
    with pytest.raises(ValueError, match=r"`sampler.schedule_steps` \(2999\) must be >= "
                                         r"`train.adv_steps` \(3000\)"):
        SamplerConfig(schedule_steps=2999).tau_schedule(3000)
