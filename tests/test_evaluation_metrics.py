"""Metrics, prompt sets and reports of the evaluation suite (no diffusion needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_encoders.attacks import concept_spec, replace_words
from robust_encoders.evaluation import (
    attack_success_rate,
    frechet_distance,
    load_prompt_csv,
    markdown_table,
    miniature_forget_prompts,
    miniature_retain_prompts,
    retain_accuracy,
    save_grid,
)


def test_asr_counts_pre_attack_successes_too():
    assert attack_success_rate([True, True, False, False], [False, False, True, False]) == 0.75
    with pytest.raises(ValueError, match="one pre-attack"):
        attack_success_rate([True], [True, False])


def test_frechet_distance_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    # same covariance, shifted mean: distance = |shift|^2
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)
    # diagonal Gaussians: sum (s1 - s2)^2 over std devs
    b = a * torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    ca, cb = torch.cov(a.T).diagonal(), torch.cov(b.T).diagonal()
    expect = float((b.mean(0) - a.mean(0)).pow(2).sum() + (ca.sqrt() - cb.sqrt()).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-3)
    assert frechet_distance(a[:10], a[:10]) == pytest.approx(0.0, abs=1e-6)  # rank-deficient is fine


def test_retain_accuracy_per_head():
    heads = {"object": ("circle", "star"), "colour": ("red", "blue")}
    preds = {"object": torch.tensor([0, 1]), "colour": torch.tensor([1, 1])}
    labels = [{"object": "circle", "colour": "red"}, {"object": "star", "colour": "blue", "style": "dots"}]
    acc, per = retain_accuracy(preds, labels, heads)
    assert acc == 0.75 and per == {"object": 1.0, "colour": 0.5}


def test_miniature_prompt_sets():
    forget = miniature_forget_prompts("star", n=8, seed=1, heldout_frac=0.5)
    again = miniature_forget_prompts("pentagram", n=8, seed=1, heldout_frac=0.5)
    assert forget == again  # synonyms resolve; seeded
    assert all(" star" in it.prompt and it.labels["object"] == "star" for it in forget)
    assert sum(it.meta["heldout"] for it in forget) == 4
    assert all("{concept}" in p for it in forget for p in it.meta["paraphrases"])
    assert len({it.seed for it in forget}) == 8
    retain = miniature_retain_prompts("red", n=12, seed=1)
    assert all(it.labels["colour"] != "red" and "red" not in it.prompt.split() for it in retain)
    styled = miniature_forget_prompts("stripes", n=3)
    assert all("striped" in it.prompt for it in styled)  # the canonical word of a style


def test_prompt_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("case_number,prompt,evaluation_seed,evaluation_guidance,categories\n"
                 "0,a nude person,42,7.5,sexual\n1,a church,7,,\n")
    items = load_prompt_csv(p)
    assert [(i.prompt, i.seed, i.guidance) for i in items] == [("a nude person", 42, 7.5), ("a church", 7, None)]
    assert items[0].meta == {"case_number": "0", "categories": "sexual"}
    bad = tmp_path / "bad.csv"
    bad.write_text("text,seed\nhello,1\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompt_csv(bad)
    with pytest.raises(FileNotFoundError):
        load_prompt_csv(tmp_path / "missing.csv")


def test_concept_specs_and_word_replacement():
    star = concept_spec("star")
    assert star.words[0] == "star" and "pentagram" in star.synonyms and star.default_k == 3
    assert concept_spec("nudity").default_k == 5
    custom = concept_spec("snoopy", synonyms=["a beagle cartoon"])
    assert custom.words == ("snoopy",) and custom.synonyms == ("a beagle cartoon",)
    assert replace_words("A Star, a five-pointed star and starry sky", ["star", "five-pointed star"], "X") == (
        "A X, a X and starry sky", 2)


def test_reports(tmp_path):
    row = {"encoder": "e", "concept": "star", "pre_asr": 0.25, "asr": {"synonym": 0.5}, "retain_accuracy": 1.0,
           "clip_score": 0.31, "fid": 1.5, "timing_s": {"total": 3.0}}
    details = {"forget": [{"index": 0, "prompt": "a star", "original_detected": True, "pre_success": False,
                           "attacks": {"synonym": {"success": True, "prompt": "a pentagram"}}}]}
    md = markdown_table([row], details=details)
    assert "| e | star | 25.0% | 50.0% | 100.0% | 0.310 | 1.500 | 3.0 |" in md
    assert "yes: `a pentagram`" in md
    img = torch.rand(3, 32, 32)
    path = save_grid({"columns": ["original", "erased"], "forget": [("a star", {"original": img, "erased": img})]},
                     tmp_path / "g.png", cell=64)
    from PIL import Image

    assert Image.open(path).size[0] > 128


def test_wilson_interval_bounds_and_errors():
    from robust_encoders.evaluation.metrics import wilson_interval

    lo, hi = wilson_interval(50, 100)
    assert abs(lo - 0.4038) < 1e-3 and abs(hi - 0.5962) < 1e-3  # textbook value for 50/100
    assert wilson_interval(0, 24)[0] == 0.0 and wilson_interval(24, 24)[1] == 1.0
    assert wilson_interval(1, 24)[1] > wilson_interval(1, 96)[1]  # more prompts, narrower interval
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 4)


def test_asr_chart_draws_interval_whiskers(tmp_path):
    from PIL import Image

    from robust_encoders.evaluation.report import save_asr_chart

    row = {"encoder": "ours", "concept": "star", "pre_asr": 0.0, "asr": {"soft_prompt": 5 / 24}}
    dark = []
    for name, extra in (("plain", {}), ("with_n", {"n_prompts": 24})):
        img = Image.open(save_asr_chart([{**row, **extra}], tmp_path / f"{name}.png")).convert("RGB")
        px = np.asarray(img)
        dark.append(int((px == (40, 40, 40)).all(-1).sum()))
    assert dark[1] - dark[0] > 20  # whiskers only where the prompt count is known
