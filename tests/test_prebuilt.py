"""The prebuilt miniature encoders shipped in the package: registered, loadable offline, and they really erase."""

from __future__ import annotations

import json

import pytest
import torch

from robust_encoders import apply_robust_encoder, get_pretrained, list_pretrained, load_robust_encoder

SHIPPED = {"miniature/star": "object", "miniature/red": "colour", "miniature/stripes": "style"}
OTHER = {"star": "heart", "red": "blue", "stripes": "dots"}  # a concept of the same kind that must survive


@pytest.fixture(scope="module")
def world():
    from robust_encoders.detectors import load_detector
    from robust_encoders.miniature import load_pipeline

    return load_pipeline(), load_detector("miniature")


def _detection_rate(pipe, detector, concept: str, n: int = 16) -> float:
    """Share of plain concept prompts (training and held-out phrasings) whose image shows the concept."""
    from robust_encoders.evaluation.prompts import miniature_forget_prompts

    forget = miniature_forget_prompts(concept, n=n, seed=0)
    gen = [torch.Generator().manual_seed(p.seed) for p in forget]
    images = pipe([p.prompt for p in forget], num_inference_steps=25, guidance_scale=7.5, generator=gen,
                  output_type="pt").images
    return float(detector.detect(images, concept).float().mean())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_registered_and_loadable_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_pretrained(name)
    assert spec.source == "package" and spec.concept_kind == SHIPPED[name] and spec.families == ("miniature",)
    assert name in [s.name for s in list_pretrained()]
    folder = spec.resolve_local_path()
    info = json.loads((folder / "robust_encoder.json").read_text())
    assert info["base_model"] == "miniature" and info["evaluations"], "export must carry measured numbers"
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    pre = [r for r in card.data.eval_results if r.metric_name.startswith("Pre-ASR")]
    assert pre and pre[0].metric_value == pytest.approx(info["evaluations"][0]["pre_asr"], abs=1e-4)
    enc = load_robust_encoder(name)
    base = load_robust_encoder("miniature")
    changed = [k for k, v in enc.state_dict().items() if not torch.equal(v, base.state_dict()[k].to(v.dtype))]
    assert changed and not any("token_embedding" in k for k in changed)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_prebuilt_erases_its_concept_and_keeps_the_rest(name, world):
    from robust_encoders.miniature import load_pipeline

    original, detector = world
    concept = name.split("/")[1]
    before = _detection_rate(original, detector, concept)
    erased = apply_robust_encoder(load_pipeline(), name)
    after = _detection_rate(erased, detector, concept)
    assert before >= 0.9, f"the original miniature model should draw {concept} (got {before:.0%})"
    assert after <= 0.25, f"{name} should no longer draw {concept} (detected in {after:.0%} of images)"
    other_before = _detection_rate(original, detector, OTHER[concept])
    other_after = _detection_rate(erased, detector, OTHER[concept])
    assert other_after >= other_before - 0.125, f"{name} should still draw {OTHER[concept]}"
