"""Pipeline attacks on the miniature Stable Diffusion (real diffusers pipeline, real detector)."""

from __future__ import annotations

import copy

import pytest
import torch

from robust_encoders.attacks import (
    AttackContext,
    AttackTarget,
    SDModel,
    SynonymAttack,
    build_attack,
    concept_spec,
)
from robust_encoders.detectors import MiniatureDetector
from robust_encoders.evaluation import miniature_forget_prompts


@pytest.fixture(scope="module")
def model():
    from robust_encoders.miniature import load_pipeline

    return SDModel(load_pipeline(), steps=4, batch_size=4)


@pytest.fixture(scope="module")
def detector():
    return MiniatureDetector()


def _targets(model, n=2, steps=None):
    items = miniature_forget_prompts("star", n=n, seed=3)
    gen = model.generate(model.pipe.text_encoder, [i.prompt for i in items], seeds=[i.seed for i in items],
                         return_latents=True, steps=steps)
    return [AttackTarget(k, it.prompt, it.seed, None, gen.latents[k], it.meta) for k, it in enumerate(items)], gen


def test_generation_is_per_seed_and_loss_has_gradients(model):
    enc = model.pipe.text_encoder
    prompts = ["a red star", "a blue circle on a striped background", "a heart"]
    together = model.generate(enc, prompts, seeds=[1, 2, 3])
    alone = model.generate(enc, prompts[1:2], seeds=[2])
    assert together.shape == (3, 3, 32, 32) and 0 <= float(together.min()) <= float(together.max()) <= 1
    assert torch.allclose(together[1], alone[0], atol=1e-4)
    with pytest.raises(ValueError, match="one seed per prompt"):
        model.generate(enc, prompts, seeds=[1])
    ids = model.ids(prompts[:2])
    emb = enc.get_input_embeddings()(ids).detach().requires_grad_(True)
    loss = model.denoise_loss(model.cond_from_embeds(enc, emb, ids), torch.randn(2, 4, 16, 16),
                              torch.tensor([10, 900]), torch.randn(2, 4, 16, 16))
    assert loss.shape == (2,)
    loss.sum().backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0


def test_teacher_objective_is_zero_for_the_original_encoder(model):
    """With a teacher, the goal is the original model's own prediction: the original encoder on the same
    prompt scores exactly zero, another prompt does not, and the plain diffusion loss is the noise target."""
    from robust_encoders.attacks import DenoiseLoss
    from robust_encoders.core.text import encode_ids

    enc = model.pipe.text_encoder
    prompts = ["a red star on stripes", "a blue circle"]
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    teacher = DenoiseLoss(model, z0, (0, 999), samples=3, seed=1, teacher=model.cond(enc, prompts))
    plain = DenoiseLoss(model, z0, (0, 999), samples=3, seed=1)
    with torch.no_grad():
        same = teacher(encode_ids(enc, model.ids(prompts)))
        swapped = teacher(encode_ids(enc, model.ids(prompts[::-1])))
        noise_goal = plain(encode_ids(enc, model.ids(prompts)))
    assert float(same.abs().max()) < 1e-10
    assert float(swapped.min()) > 1e-6
    assert torch.equal(plain.goal, plain.noise) and float(noise_goal.min()) > float(same.max())
    teacher.resample()
    assert not torch.equal(teacher.goal, teacher.noise)
    with pytest.raises(ValueError, match="objective"):
        build_attack("unlearndiffatk", objective="noise")


def test_sdmodel_rejects_other_pipelines():
    with pytest.raises(TypeError, match="StableDiffusionPipeline"):
        SDModel(object())


@pytest.mark.parametrize("name,overrides", [
    ("unlearndiffatk", {"steps": 2, "check_every": 1, "k": 2}),
    ("soft_prompt", {"steps": 2, "check_every": 2}),
    ("ringabell", {"steps": 3, "etas": (2.0,), "n_tokens": 4}),
    ("synonym", {"max_variants": 2}),
    ("inversion", {"steps": 3, "n_train": 2}),
])
def test_each_attack_returns_ordered_outcomes(model, detector, name, overrides):
    targets, _ = _targets(model)
    enc = copy.deepcopy(model.pipe.text_encoder)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    ctx = AttackContext(model, enc, model.pipe.text_encoder, detector, concept_spec("star"), seed=0)
    atk = build_attack(name, **overrides)
    atk.setup(ctx, targets)
    out = atk.attack(ctx, targets, seed=5)
    assert [o.index for o in out] == [t.index for t in targets]
    assert all(o.image is not None and o.image.shape == (3, 32, 32) and o.queries >= 1 for o in out)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert all(p.requires_grad for p in enc.parameters())
    if name == "unlearndiffatk":  # real tokens prefixed to the prompt
        assert all(o.prompt.endswith(t.prompt) and o.prompt != t.prompt for o, t in zip(out, targets, strict=True))
    if name == "soft_prompt":
        assert all(o.prompt is None for o in out)
    if name == "ringabell":
        assert atk.vector.shape == (77, 64)
    if name == "inversion":
        assert atk.embedding.shape == (64,) and len(atk.losses) == 3 and "<inverted>" in out[0].prompt
    if name == "synonym":
        assert "star" not in out[0].prompt.split()


def test_synonym_variants_use_synonyms_and_heldout_paraphrases(model, detector):
    targets, _ = _targets(model, n=1)
    ctx = AttackContext(model, model.pipe.text_encoder, model.pipe.text_encoder, detector, concept_spec("star"))
    variants = SynonymAttack().variants(ctx, targets[0])
    assert len(variants) == 8 and len(set(variants)) == 8
    assert any("pentagram" in v for v in variants) and any("five-pointed star" in v for v in variants)
    assert all(" star " not in f" {v} ".replace("five-pointed star", "") for v in variants)
    with pytest.raises(KeyError, match="no setting"):
        build_attack("synonym", steps=3)
    with pytest.raises(KeyError, match="Unknown attack"):
        build_attack("gcg")


def _word_erased(encoder, tokenizer, word: str, replacement: str):
    """A real (if naive) erasure: the word's token embeddings are overwritten by another word's."""
    enc = copy.deepcopy(encoder)
    src = tokenizer(word, add_special_tokens=False).input_ids
    dst = tokenizer(replacement, add_special_tokens=False).input_ids
    with torch.no_grad():
        table = enc.get_input_embeddings().weight
        for s in src:
            table[s] = table[dst[0]]
    return enc


def test_attacks_break_a_word_level_erasure(model, detector):
    """On trained weights: synonyms and UnlearnDiffAtk bring back a star erased only at its word embedding."""
    full = SDModel(model.pipe, steps=20, batch_size=8)
    targets, gen = _targets(full, n=6)
    orig_hit = detector.detect(gen.images, "star")
    if float(orig_hit.float().mean()) < 0.6:
        pytest.skip(f"miniature pipeline draws no reliable stars yet (placeholder weights?): "
                    f"{int(orig_hit.sum())}/6 detected")
    erased = _word_erased(model.pipe.text_encoder, model.tokenizer, "star", "circle")
    plain = full.generate(erased, [t.prompt for t in targets], seeds=[t.seed for t in targets])
    assert float(detector.detect(plain, "star").float().mean()) <= 0.34  # the erasure works on plain prompts
    ctx = AttackContext(full, erased, model.pipe.text_encoder, detector, concept_spec("star"), seed=0)
    syn = build_attack("synonym", max_variants=3).attack(ctx, targets, seed=0)
    assert sum(o.success for o in syn) >= 4
    # the prompt now literally asks for a circle; 5 real prefix tokens still bring stars back for some
    uda = build_attack("unlearndiffatk", k=5, steps=40, check_every=10).attack(ctx, targets, seed=0)
    assert sum(o.success for o in uda) >= 2
