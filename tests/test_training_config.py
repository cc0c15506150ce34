"""Recipes, dotted overrides, validation and the `train` CLI surface (no model is loaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from robust_encoders.training import (
    REAL_CONCEPTS,
    ConfigError,
    TrainConfig,
    UnknownConceptError,
    apply_overrides,
    list_recipes,
    load_recipe,
    recipes_dir,
    resolve_concept,
)
from robust_encoders.training.prompts import (
    default_retain_prompts,
    mentions,
    miniature_forget_prompts,
    miniature_retain_prompts,
)

MINI = {"concept": {"name": "star"}, "model": {"base_model": "miniature"}}


def test_overrides_parse_types_and_validate():
    cfg = apply_overrides(TrainConfig.from_dict(MINI), [
        "attack.steps=5", "optim.lr=1e-5", "trainable.lora.targets=[q_proj, v_proj]", "optim.grad_clip=null",
        ("retain.weight", 0.25), "attack.enabled=false",
    ])
    assert cfg.attack.steps == 5 and cfg.optim.lr == pytest.approx(1e-5)
    assert cfg.trainable.lora.targets == ["q_proj", "v_proj"] and cfg.optim.grad_clip is None
    assert cfg.retain.weight == 0.25 and cfg.attack.enabled is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("atack.steps=5", "Did you mean 'attack.steps'"),
        ("attack.stepz=5", "Did you mean 'attack.steps'"),
        ("retain.wieght=0.3", "Did you mean 'retain.weight'"),
        ("lr=1e-4", "'optim.lr'"),
        ("attack.steps=five", "attack.steps must be an integer"),
        ("attack.mode=sparse", "attack.mode='sparse' is not valid"),
        ("trainable.part=everything", "choose one of"),
        ("sampling.pool=6", "multiple of sampling.refresh"),
        ("attack.steps", "is not KEY=VALUE"),
        ("attack.bound=ball", "attack.bound='ball' is not valid"),
    ],
)
def test_bad_overrides_teach(override, message):
    cfg = TrainConfig.from_dict(MINI)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(cfg, [override, "sampling.refresh=4"] if "pool" in override else [override])


def test_attack_bound_reaches_the_attack_and_is_checked_against_the_mode():
    cfg = apply_overrides(TrainConfig.from_dict(MINI), ["attack.bound=vocab"])
    assert cfg.attack.to_prompt_attack_config(0).bound == "vocab"
    with pytest.raises(ConfigError, match="attack.bound=none with attack.mode=derived"):
        apply_overrides(cfg, ["attack.mode=derived"])
    with pytest.raises(ConfigError, match="bound='none' with mode='discrete'"):
        apply_overrides(cfg, ["attack.mode=discrete"])


def test_unknown_recipe_key_is_rejected(tmp_path):
    (tmp_path / "r.yaml").write_text("concept:\n  name: star\nmodel:\n  base_model: miniature\nattack:\n  stpes: 3\n")
    with pytest.raises(ConfigError, match="Unknown config key 'attack.stpes'. Did you mean 'attack.steps'"):
        load_recipe(tmp_path / "r.yaml")


def test_every_recipe_loads_and_is_headed_by_its_command():
    folder = recipes_dir()
    names = list_recipes()
    for need in ["miniature_default", "miniature_star", "miniature_red", "miniature_stripes", *REAL_CONCEPTS]:
        assert need in names
    for name in names:
        path = folder / f"{name}.yaml"
        first = path.read_text().splitlines()[0]
        assert first.startswith("# robust-encoders train --recipe recipes/" + path.name), (name, first)
        overrides = ["concept.name=heart"] if name == "miniature_default" else []
        if name == "advunlearn_sd14":
            overrides = ["concept.name=vangogh", "concept.kind=style"]
        cfg = load_recipe(path, overrides)
        assert cfg.recipe == name


def test_real_recipes_carry_advunlearn_defaults():
    for name in REAL_CONCEPTS:
        cfg = load_recipe(recipes_dir() / f"{name}.yaml")
        assert (cfg.iterations, cfg.optim.lr, cfg.attack.warmup) == (1000, 1e-5, 200)
        assert (cfg.attack.steps, cfg.attack.lr, cfg.attack.k, cfg.attack.position) == (30, 1e-3, 1, "prefix")
        assert (cfg.retain.batch_size, cfg.unlearn.ddim_steps) == (5, 50)
        assert cfg.retain.weight == (0.3 if name == "nudity" else 0.5)
        assert cfg.model.base_model == "CompVis/stable-diffusion-v1-4"


def test_concepts_resolve_to_recipes():
    assert resolve_concept("star")[0].name == "miniature_star.yaml"
    assert resolve_concept("pentagram")[0].name == "miniature_star.yaml"  # a synonym
    path, extra = resolve_concept("heart")
    assert path.name == "miniature_default.yaml" and "concept.name=heart" in extra
    assert resolve_concept("vangogh")[0].name == "vangogh.yaml"
    assert resolve_concept("Van Gogh")[0].name == "vangogh.yaml"
    with pytest.raises(UnknownConceptError, match="Did you mean: star"):
        resolve_concept("starr")


def test_miniature_default_fits_the_cpu_budget():
    cfg = load_recipe(recipes_dir() / "miniature_star.yaml")
    # 600 iterations x 16 attack steps took 412 s on 2 idle CPU cores (budget 900 s); the cost grows with both. The
    # soft + GCG chains (8 soft steps, then 2 GCG steps of 16 candidates) cost 0.81-0.84 s/it at one thread
    assert cfg.is_miniature and cfg.iterations * max(cfg.attack.steps_per_chain) <= 600 * 16
    assert cfg.unlearn.ddim_steps <= 20 and cfg.attack.candidates <= 16
    assert cfg.sampling.pool > 0 and cfg.engine.share_unet  # the fast engine paths the budget was measured with


def test_prompt_sets():
    sd = default_retain_prompts()
    assert len(sd) >= 200 and len(set(sd)) == len(sd)
    assert not [p for p in sd if mentions(p, ["church", "garbage truck", "parachute", "tench", "nudity", "van gogh"])]
    for concept in ("star", "red", "stripes"):
        forget = miniature_forget_prompts(concept)
        assert forget and all(concept in p or concept[:-1] in p for p in forget)
        retain = miniature_retain_prompts(concept, n=200, seed=0)
        assert len(retain) == 200
        from robust_encoders.miniature import CONCEPTS

        assert not [p for p in retain if mentions(p, CONCEPTS[concept].synonyms)]


def test_cli_register_adds_train_with_examples(capsys):
    from robust_encoders.training.cli import register, run_train

    parser = argparse.ArgumentParser(prog="robust-encoders")
    sub = parser.add_subparsers(dest="command")
    p = register(sub)
    assert "robust-encoders train --concept star" in p.epilog
    args = parser.parse_args(["train", "--concept", "star", "attack.steps=3", "--print-config"])
    assert args.func is run_train
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "steps: 3" in out and "name: star" in out
    args = parser.parse_args(["train", "--concept", "star", "atack.steps=3", "--print-config"])
    assert args.func(args) == 2
    assert "Did you mean 'attack.steps'" in capsys.readouterr().err
    args = parser.parse_args(["train", "--concept", "nosuchthing"])
    assert args.func(args) == 2
    assert "Unknown concept 'nosuchthing'" in capsys.readouterr().err


def test_resolved_config_round_trips_through_yaml(tmp_path: Path):
    cfg = load_recipe(recipes_dir() / "miniature_red.yaml", ["attack.steps=4"])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml("# header"))
    again = load_recipe(tmp_path / "config.yaml")
    assert again.to_dict() == {**cfg.to_dict(), "recipe": cfg.recipe}


def test_miniature_default_alternates_soft_and_gcg_chains_and_naming_a_mode_gives_one_chain(tmp_path: Path):
    cfg = load_recipe(recipes_dir() / "miniature_star.yaml")
    assert (cfg.attack.modes, cfg.attack.steps_per_chain) == (["continuous", "gcg"], [8, 2])
    # attack.steps moves the soft chain (its chain_steps entry is null); the GCG chain keeps its 2 steps
    assert load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.steps=5"]).attack.steps_per_chain == [5, 2]
    # one key back to the single soft chain, the same run as spelling all three keys out
    one = load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.mode=continuous"])
    spelled = load_recipe(recipes_dir() / "miniature_star.yaml",
                          ["attack.chains=1", "attack.chain_modes=null", "attack.chain_steps=null"])
    assert (one.attack.modes, one.attack.steps_per_chain) == (["continuous"], [8])
    assert one.fingerprint() == spelled.fingerprint() != cfg.fingerprint()
    # any named mode: RECE's derived embeddings, or GCG with a named number of chains
    assert load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.mode=derived"]).attack.modes == ["derived"]
    two = load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.mode=gcg", "attack.chains=2"]).attack
    assert (two.modes, two.steps_per_chain) == (["gcg", "gcg"], [8, 8])
    # the same on a built config, and from a recipe that extends the default
    assert apply_overrides(cfg, ["attack.mode=discrete"]).attack.modes == ["discrete"]
    assert apply_overrides(cfg, ["attack={mode: discrete}"]).attack.modes == ["discrete"]  # a section's keys count
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {recipes_dir() / 'miniature_star.yaml'}\nattack:\n  mode: gcg\n")
    assert load_recipe(child).attack.modes == ["gcg"]
    child.write_text(f"extends: {recipes_dir() / 'miniature_star.yaml'}\nattack:\n  k: 5\n")
    assert load_recipe(child).attack.modes == ["continuous", "gcg"]
    # a null per-chain step count is attack.steps: the same run as writing the number
    same = load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.chain_steps=[8,2]"])
    assert same.fingerprint() == cfg.fingerprint() and same.comparable_dict() == cfg.comparable_dict()
    with pytest.raises(ConfigError, match="or null for attack.steps"):
        load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.chain_steps=[null,-1]"])
    # per-chain tokens: a null entry is attack.k, so [null, 3] is the recipe itself; naming a mode drops them
    five = load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.chain_k=[null,5]"])
    assert (five.attack.k_per_chain, cfg.attack.k_per_chain) == ([3, 5], [3, 3])
    assert [five.attack.to_prompt_attack_config(0, i).k for i in (0, 1)] == [3, 5]
    same_k = load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.chain_k=[null,3]"])
    assert same_k.fingerprint() == cfg.fingerprint() != five.fingerprint()
    assert apply_overrides(five, ["attack.mode=continuous"]).attack.k_per_chain == [3]
    with pytest.raises(ConfigError, match="attack.mode=continuous, for a single chain"):
        load_recipe(recipes_dir() / "miniature_star.yaml", ["attack.chains=1"])
