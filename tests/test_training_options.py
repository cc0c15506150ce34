"""Trainer options from the literature (training/options.py): each mechanism on its own, then one run with all on."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny import TINY_TRAIN as TINY
from robust_encoders.core.text import encode_from_token_embeds, encode_ids, tokenize
from robust_encoders.tokenization import load_clip_tokenizer
from robust_encoders.training import train
from robust_encoders.training.config import ConfigError, TrainConfig, apply_overrides
from robust_encoders.training.options import (
    AdversarialAnchor,
    TrainerOptions,
    concept_positions,
    derive_embeddings,
    eot_mapping_loss,
    mine_neighbors,
    place_rows,
    project_conflicting,
)

EOS = 49407


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


def _encoder(seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, eos_token_id=EOS)
    return CLIPTextModel(cfg).eval()


def _word_ids(tok, words):
    return [tok(w, add_special_tokens=False).input_ids for w in words]


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------
def test_options_are_off_by_default_and_validated():
    cfg = TrainConfig.from_dict({"concept": {"name": "star"}})
    assert (cfg.anchor.kind, cfg.neighbors.k, cfg.optim.grad_surgery, cfg.token_focus.mode, cfg.attack.mode) == (
        "empty", 0, "none", "all", "continuous")
    on = apply_overrides(cfg, ["anchor.kind=adversarial", "neighbors.k=4", "optim.grad_surgery=per_tensor",
                               "token_focus.mode=eot", "attack.mode=derived"])
    assert on.attack.to_prompt_attack_config(0).mode == "continuous"  # derived validates its shared settings
    with pytest.raises(ConfigError, match="no neighbour falls below"):
        apply_overrides(on, ["neighbors.radius=0.2"])
    with pytest.raises(ConfigError, match="0 < s1 < s2 < 1"):
        apply_overrides(on, ["neighbors.s1=0.96"])
    with pytest.raises(ConfigError, match="grad_surgery"):
        apply_overrides(on, ["optim.grad_surgery=global"])
    with pytest.raises(ConfigError, match="anchor.kind"):
        apply_overrides(on, ["anchor.kind=random"])
    with pytest.raises(ConfigError, match="Did you mean .*'neighbors.k'"):
        apply_overrides(on, ["neighbours.k=2"])


# ---------------------------------------------------------------------------------------------------------------
# DoCo: gradient surgery
# ---------------------------------------------------------------------------------------------------------------
def test_surgery_removes_exactly_the_conflicting_component():
    g = torch.Generator().manual_seed(0)
    gr0 = torch.randn(5, 3, generator=g)
    gf0 = -0.7 * gr0 + torch.randn(5, 3, generator=g) * 0.1  # conflicts
    gr1 = torch.randn(4, generator=g)
    gf1 = gr1 + 0.1 * torch.randn(4, generator=g)  # agrees
    out, n = project_conflicting([gf0, gf1, None, torch.ones(2)], [gr0, gr1, torch.ones(1), None])
    assert n == 1
    assert float((gf0 * gr0).sum()) < 0
    assert abs(float((out[0] * gr0).sum())) < 1e-5  # no component along the retain gradient is left
    removed = gf0 - out[0]
    coef = (removed * gr0).sum() / (gr0 * gr0).sum()
    torch.testing.assert_close(removed, coef * gr0)  # ... and only that component was removed
    torch.testing.assert_close(out[0], gf0 - (gf0 * gr0).sum() / (gr0 * gr0).sum() * gr0)
    assert out[1] is gf1 and out[2] is None and torch.equal(out[3], torch.ones(2))


def test_surgery_combines_into_param_grads():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    p1.grad, p2.grad = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    forget = TrainerOptions.take_grads([p1, p2])
    assert p1.grad is None and p2.grad is None
    p1.grad, p2.grad = torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0])
    assert TrainerOptions.combine([p1, p2], forget) == 1
    torch.testing.assert_close(p1.grad, torch.tensor([0.5, 0.5]) + torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(p2.grad, torch.tensor([2.0, 1.0]))


# ---------------------------------------------------------------------------------------------------------------
# RealEra: neighbour mining
# ---------------------------------------------------------------------------------------------------------------
def test_mined_neighbors_satisfy_band_and_norm():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 64, generator=g) * torch.linspace(0.1, 3.0, 6).unsqueeze(1)
    s1, s2, radius = 0.8, 0.95, 1.0
    fo, ro = mine_neighbors(e, 16, s1=s1, s2=s2, radius=radius, generator=g)
    assert fo.shape == ro.shape == (16, 6, 64)
    cos_f = torch.nn.functional.cosine_similarity(e.unsqueeze(0), e + fo, dim=-1)
    cos_r = torch.nn.functional.cosine_similarity(e.unsqueeze(0), e + ro, dim=-1)
    assert bool((cos_f >= s1 - 1e-5).all() and (cos_f <= s2 + 1e-5).all())
    assert bool((cos_r < s1).all())
    bound = radius * e.norm(dim=-1)
    assert bool((fo.norm(dim=-1) <= bound + 1e-5).all() and (ro.norm(dim=-1) <= bound + 1e-5).all())
    assert float(cos_f.std()) > 0.01  # spread over the band, not one point
    again = mine_neighbors(e, 16, s1=s1, s2=s2, radius=radius, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again[0], fo)  # a different stream gives different neighbours
    with pytest.raises(ValueError, match="no neighbour falls below"):
        mine_neighbors(e, 2, s1=s1, s2=s2, radius=0.3, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# concept tokens
# ---------------------------------------------------------------------------------------------------------------
def test_concept_positions_and_place_rows(tok):
    words = ["five-pointed star", "stripes", "striped", "star"]
    wid = _word_ids(tok, words)
    order = sorted(range(len(words)), key=lambda i: -len(wid[i]))
    wid = [wid[i] for i in order]
    words = [words[i] for i in order]
    ids = tokenize(tok, ["a red star", "a five-pointed star", "a square on a striped background", "a circle"])
    found = concept_positions(ids, wid)
    assert found[0][0] == [3] and words[found[0][1]] == "star"
    assert words[found[1][1]] == "five-pointed star" and len(found[1][0]) == len(wid[found[1][1]]) > 1
    assert words[found[2][1]] == "striped"
    assert found[3] == ([], -1)
    emb = torch.zeros(4, ids.shape[1], 8)
    rows = torch.arange(16.0).view(2, 8)
    out = place_rows(emb, [p for p, _ in found], rows, add=True)
    assert torch.equal(out[0, 3], rows[0]) and out[0].abs().sum() == rows[0].abs().sum()
    assert torch.equal(out[1, found[1][0][-1]], rows[1])  # later tokens of a longer word reuse the last row
    assert out[3].abs().sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# TRCE: EoT focus
# ---------------------------------------------------------------------------------------------------------------
def test_eot_focus_only_weights_eot_positions(tok):
    ids = tokenize(tok, ["a red star on a striped background", "a star"])
    first = (ids == EOS).int().argmax(-1)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, ids.shape[1], 16, generator=g, requires_grad=True)
    target = torch.randn(2, ids.shape[1], 16, generator=g)
    loss = eot_mapping_loss(hidden, ids, target, ids, EOS)
    (grad,) = torch.autograd.grad(loss.sum(), hidden)
    for b in range(2):
        f = int(first[b])
        assert grad[b, :f].abs().sum() == 0  # BOS and the prompt's words get no weight
        assert bool((grad[b, f:].abs().sum(-1) > 0).all())  # the EoT token and the padding after it do
    with torch.no_grad():
        moved = hidden.clone()
        moved[:, 1] += 5.0
        torch.testing.assert_close(eot_mapping_loss(moved, ids, target, ids, EOS), loss.detach())
        moved[0, int(first[0])] += 5.0
        assert float(eot_mapping_loss(moved, ids, target, ids, EOS)[0]) != float(loss[0])
    # prompts of different lengths align by offset from their first EoT
    safe = tokenize(tok, ["a on a striped background", "a"])
    ft = (safe == EOS).int().argmax(-1)
    tgt = torch.zeros_like(target)
    for b in range(2):
        n = ids.shape[1] - int(first[b])
        tgt[b, int(ft[b]):int(ft[b]) + n] = hidden.detach()[b, int(first[b]):int(first[b]) + n]
    assert float(eot_mapping_loss(hidden.detach(), ids, tgt, safe, EOS).max()) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# RECE-style derived embeddings
# ---------------------------------------------------------------------------------------------------------------
def test_derived_embeddings_reduce_the_encoder_output_gap(tok):
    original = _encoder(0)
    current = _encoder(0)
    star = tok("star", add_special_tokens=False).input_ids
    with torch.no_grad():  # "erased": the current encoder drifted, and lost what its 'star' embedding meant
        for p in current.parameters():
            p.add_(0.002 * torch.randn_like(p))
        current.get_input_embeddings().weight[star] = torch.randn(len(star), 32)
    ids = tokenize(tok, ["a red star", "a star on a dotted background"])
    pos = [p for p, _ in concept_positions(ids, _word_ids(tok, ["star"]))]
    with torch.no_grad():
        target = encode_ids(original, ids).last_hidden_state
    init = current.get_input_embeddings().weight[star].detach().clone()
    flags = [p.requires_grad for p in current.parameters()]
    before = [p.detach().clone() for p in current.parameters()]
    rows, losses, final = derive_embeddings(current, ids, pos, init, target, steps=60, lr=0.1)
    assert rows.shape == init.shape and not torch.equal(rows, init)
    assert losses[-1] < losses[0] and float(final.mean()) < 0.5 * losses[0]
    with torch.no_grad():  # the derived rows, placed at the concept tokens, reproduce the original output better
        emb = place_rows(current.get_input_embeddings()(ids), pos, rows, add=False)
        gap_derived = (encode_from_token_embeds(current, emb, ids).last_hidden_state - target).pow(2).mean()
        gap_plain = (encode_ids(current, ids).last_hidden_state - target).pow(2).mean()
    assert float(gap_derived) < 0.5 * float(gap_plain)
    assert [p.requires_grad for p in current.parameters()] == flags  # weights untouched, flags restored
    assert all(torch.equal(a, b) for a, b in zip(before, current.parameters(), strict=True))
    bounded, _, _ = derive_embeddings(current, ids, pos, init, target, steps=10, lr=0.05, eps=0.01)
    assert float((bounded - init).abs().max()) <= 0.01 + 1e-6


# ---------------------------------------------------------------------------------------------------------------
# AdvAnchor
# ---------------------------------------------------------------------------------------------------------------
def test_adversarial_anchor_stays_bounded_and_changes_over_refreshes(tok):
    enc = _encoder(1)
    ids = tokenize(tok, ["a red star", "a star"])
    pos = [p for p, _ in concept_positions(ids, _word_ids(tok, ["star"]))]
    with torch.no_grad():
        base_emb = enc.get_input_embeddings()(ids)
        concept = encode_ids(enc, ids).last_hidden_state
    rows = enc.get_input_embeddings().weight[tok("star", add_special_tokens=False).input_ids].detach()
    anchor = AdversarialAnchor(rows, radius=0.5, lr=0.2, steps=4, generator=torch.Generator().manual_seed(0))

    def disagreement(delta):
        out = encode_from_token_embeds(enc, place_rows(base_emb, pos, delta, add=True), ids).last_hidden_state
        return 1 - torch.nn.functional.cosine_similarity(out.flatten(1), concept.flatten(1)).mean()

    bound = anchor.bound().squeeze(-1)
    history = [anchor.delta.clone()]
    values = []
    for _ in range(3):
        values.append(anchor.refresh(disagreement))
        history.append(anchor.delta.clone())
        assert bool((anchor.delta.norm(dim=-1) <= bound * (1 + 1e-5)).all())
    assert all(not torch.equal(a, b) for a, b in zip(history, history[1:], strict=False))
    with torch.no_grad():
        assert float(disagreement(anchor.delta)) > values[0][0]  # ascent: the anchor moved away from the concept
    assert float(anchor.delta.norm(dim=-1).max()) > 0.9 * float(bound.max())  # it uses the room it has


# ---------------------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------------------
ALL_ON = ["anchor.kind=adversarial", "anchor.every=2", "neighbors.k=2", "optim.grad_surgery=per_tensor",
          "token_focus.mode=eot", "token_focus.hinge_weight=0.5", "attack.mode=derived"]


def test_run_with_all_options_on_loads_and_resumes(tmp_path):
    from safetensors.torch import load_file

    from robust_encoders import load_robust_encoder

    ov = TINY + ALL_ON + ["checkpoint.every=2"]
    run = train("stripes", ov + ["iterations=3"], output_dir=tmp_path / "full")  # prompts say 'striped'
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "done"
    for key in ("anchor_disagreement", "loss_neighbors", "loss_neighbors_retain", "loss_eot", "loss_eot_hinge",
                "surgery_conflicts"):
        assert key in log[0] or key in log[1], key
    assert "attack_loss" in log[1] and "attack_loss" not in log[0]
    assert log[1]["surgery_conflicts"] >= 0 and log[0]["loss_eot"] > 0
    loaded = load_robust_encoder(run / "text_encoder")
    ids = tokenize(load_clip_tokenizer(), ["a square on a striped background"])
    assert torch.isfinite(encode_ids(loaded, ids).last_hidden_state).all()
    ck = load_file(str(run / "checkpoints" / "step_0000002" / "state.safetensors"))
    assert "options.anchor_delta" in ck
    # a run stopped at step 2 and resumed ends bit-identical (the anchor's delta and the derived rows are restored)
    train("stripes", ov + ["iterations=2"], output_dir=tmp_path / "split")
    split = train("stripes", ov + ["iterations=3"], output_dir=tmp_path / "split", resume=True)
    a = load_file(str(run / "text_encoder" / "model.safetensors"))
    b = load_file(str(split / "text_encoder" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
