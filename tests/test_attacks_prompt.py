"""PromptAttack on a tiny random CLIP text encoder (real CLIP tokenizer, real vocabulary size)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from robust_encoders.attacks import (
    AttackState,
    PromptAttack,
    PromptAttackConfig,
    VocabHull,
    build_attack,
    decode_ids,
    project_to_simplex,
)
from robust_encoders.core.text import tokenize
from robust_encoders.tokenization import load_clip_tokenizer

PROMPTS = ["a red star", "a blue heart on a striped wall"]


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407,
    )
    return CLIPTextModel(cfg).eval()


def _loss(target):
    return lambda out: ((out.pooled - target) ** 2).mean(-1)


@pytest.mark.parametrize(
    "mode,optimizer,lr",
    [("continuous", "adam", 0.05), ("continuous", "sign", 0.02), ("discrete", "adam", 0.01), ("discrete", "sign", 0.005)],
)
def test_attack_lowers_loss_and_leaves_encoder_alone(enc, tok, mode, optimizer, lr):
    target = torch.randn(32, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.encoder.layers[0].mlp.fc1.weight.requires_grad_(False)  # a mixed pattern of flags to restore
    flags = {n: p.requires_grad for n, p in enc.named_parameters()}
    cfg = PromptAttackConfig(mode=mode, steps=15, lr=lr, k=2, optimizer=optimizer, project_every=5)
    res = PromptAttack(enc, tok, cfg).run(PROMPTS, _loss(target))
    assert len(res.losses) == 15
    assert res.losses[-1] < res.losses[0]
    if mode == "continuous":
        # the returned embeddings reach a lower loss than the starting point
        assert float(res.sample_losses.mean()) < res.losses[0]
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in enc.named_parameters()}
    enc.encoder.layers[0].mlp.fc1.weight.requires_grad_(True)


@pytest.mark.parametrize("position", ["prefix", "suffix", "replace"])
def test_only_adversarial_slots_change(enc, tok, position):
    cfg = PromptAttackConfig(steps=3, lr=0.1, k=3, position=position)
    res = PromptAttack(enc, tok, cfg).run(PROMPTS, _loss(torch.zeros(32)))
    base = enc.get_input_embeddings()(res.input_ids)
    assert res.adv_mask.sum(-1).tolist() == [3, 3]
    assert torch.equal(res.token_embeds[~res.adv_mask], base[~res.adv_mask])
    assert not torch.allclose(res.token_embeds[res.adv_mask], base[res.adv_mask])
    plain = tokenize(tok, PROMPTS)
    if position == "prefix":
        assert res.adv_mask[:, 1:4].all()
        assert torch.equal(res.input_ids[0, 4:7], plain[0, 1:4])  # "a red star" shifted right by k


def test_discrete_tokens_retokenise_to_the_same_embeddings(enc, tok):
    cfg = PromptAttackConfig(mode="discrete", steps=5, lr=0.01, k=4, position="suffix")
    res = PromptAttack(enc, tok, cfg).run(PROMPTS, _loss(torch.ones(32)))
    assert res.adv_token_ids.shape == (2, 4) and len(res.texts) == 2
    ids = tokenize(tok, res.texts)
    assert torch.equal(ids, res.real_input_ids)
    assert torch.equal(enc.get_input_embeddings()(ids), res.token_embeds)
    assert res.texts[0].startswith("a red star ")
    # the reported per-prompt loss is the loss of the real tokens
    hard = ((enc(ids).pooler_output - 1) ** 2).mean(-1)
    assert torch.allclose(hard, res.sample_losses, atol=1e-5)


def test_gcg_mode_searches_real_tokens_and_warm_starts(enc, tok):
    target = torch.randn(32, generator=torch.Generator().manual_seed(3))
    rows_seen = []

    def loss(out, rows=slice(None)):
        rows_seen.append(rows)
        return ((out.pooled - target[None]) ** 2).mean(-1)

    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg = PromptAttackConfig(mode="gcg", steps=6, k=2, candidates=8, topk=32, seed=1)
    res = PromptAttack(enc, tok, cfg).run(PROMPTS, loss)
    assert rows_seen and all(isinstance(r, torch.Tensor) and r.dtype == torch.long for r in rows_seen)
    # the current tokens are always among the scored candidates and this loss has no noise: never worse, and better
    assert len(res.losses) == 6 and all(b <= a + 1e-7 for a, b in zip(res.losses, res.losses[1:], strict=False))
    start = PromptAttack(enc, tok, dataclasses.replace(cfg, steps=0)).run(PROMPTS, loss)  # the same random start
    with torch.no_grad():
        start_loss = ((enc(tokenize(tok, start.texts)).pooler_output - target) ** 2).mean(-1)
    assert float(res.sample_losses.mean()) < float(start_loss.mean())
    ids = tokenize(tok, res.texts)
    assert res.adv_token_ids.shape == (2, 2) and torch.equal(ids, res.real_input_ids)
    assert torch.equal(enc.get_input_embeddings()(ids), res.token_embeds)
    with torch.no_grad():
        hard = ((enc(ids).pooler_output - target) ** 2).mean(-1)
    torch.testing.assert_close(hard, res.sample_losses, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    # warm start: zero further steps hand back the same tokens; a smaller batch reuses the rows cyclically
    warm = dataclasses.replace(cfg, init="warm", steps=0)
    again = PromptAttack(enc, tok, warm).run(PROMPTS[:1], loss, state=res.state)
    assert torch.equal(again.adv_token_ids, res.adv_token_ids[:1]) and again.state.rounds == 2
    with pytest.raises(ValueError, match="warm-start a gcg attack from a continuous"):
        PromptAttack(enc, tok, warm).run(PROMPTS, loss, state=AttackState("continuous", torch.zeros(2, 2, 32)))


def test_gcg_eval_batch_only_chunks_the_candidate_scoring(enc, tok):
    target = torch.randn(32, generator=torch.Generator().manual_seed(4))
    sizes: dict[int, list[int]] = {}

    def loss_for(eval_batch):
        def loss(out, rows=slice(None)):
            sizes.setdefault(eval_batch, []).append(out.pooled.shape[0])
            return ((out.pooled - target[None]) ** 2).mean(-1)

        return loss

    cfg = PromptAttackConfig(mode="gcg", steps=3, k=2, candidates=8, topk=32, seed=2, micro_batch=1)
    res = {n: PromptAttack(enc, tok, dataclasses.replace(cfg, eval_batch=n)).run(PROMPTS, loss_for(n)) for n in (4, 64)}
    # 2 prompts x (8 candidates + the current tokens) = 18 sequences per step: calls of at most 4, or one of 18
    # (the gradient pass takes the 2 prompts at once; micro_batch=1 does not chunk the scoring)
    assert sizes[4].count(4) == 3 * 4 and max(sizes[4]) == 4 and sizes[64].count(18) == 3
    assert torch.equal(res[4].adv_token_ids, res[64].adv_token_ids)
    torch.testing.assert_close(res[4].sample_losses, res[64].sample_losses, atol=1e-6, rtol=1e-5)


def test_score_final_off_skips_one_pass_and_changes_nothing_else(enc, tok):
    calls = []
    target = torch.randn(32, generator=torch.Generator().manual_seed(2))

    def counted(out):
        calls.append(1)
        return _loss(target)(out)

    runs = {}
    for score in (True, False):
        calls.clear()
        cfg = PromptAttackConfig(steps=4, lr=0.05, k=2, seed=5, score_final=score)
        runs[score] = (PromptAttack(enc, tok, cfg).run(PROMPTS, counted), len(calls))
    (scored, n_scored), (unscored, n_unscored) = runs[True], runs[False]
    assert (n_scored, n_unscored) == (5, 4)  # 4 steps, plus one pass to score the result
    assert unscored.sample_losses is None and scored.sample_losses.shape == (2,)
    assert torch.equal(scored.token_embeds, unscored.token_embeds) and scored.losses == unscored.losses


def test_eps_bound_warm_start_and_seed(enc, tok):
    cfg = PromptAttackConfig(steps=4, lr=0.5, k=1, eps=0.01, optimizer="sign", init="warm", seed=3)
    att = PromptAttack(enc, tok, cfg)
    first = att.run(PROMPTS, _loss(torch.zeros(32)))
    assert first.state.rounds == 1  # warm without a state starts randomly
    again = PromptAttack(enc, tok, cfg).run(PROMPTS, _loss(torch.zeros(32)))
    assert torch.equal(first.token_embeds, again.token_embeds)  # seeded
    second = att.run(PROMPTS[:1], _loss(torch.zeros(32)), state=first.state)
    assert second.state.rounds == 2
    drift = (second.state.variable - first.state.variable[:1]).abs().max()
    assert float(drift) <= 0.01 + 1e-6  # eps ball around the warm start


def test_vocab_bound_keeps_soft_tokens_inside_the_token_hull(enc, tok):
    # a loss that pays for leaving the vocabulary: the free attack walks far out, the bounded one cannot
    hull = VocabHull(enc.get_input_embeddings().weight)
    weight = enc.get_input_embeddings().weight.detach()
    assert bool(((weight >= hull.low) & (weight <= hull.high)).all())  # every real token is inside
    assert float(weight.norm(dim=-1).max()) == pytest.approx(hull.radius)

    def outward(out):
        return -out.pooled.norm(dim=-1)

    free = PromptAttack(enc, tok, PromptAttackConfig(steps=30, lr=0.2, k=2)).run(PROMPTS, outward)
    bounded = PromptAttack(enc, tok, PromptAttackConfig(steps=30, lr=0.2, k=2, bound="vocab")).run(PROMPTS, outward)
    free_slots, slots = free.state.variable, bounded.state.variable
    assert float(free_slots.norm(dim=-1).max()) > 2 * hull.radius  # unbounded: far off every token
    assert float(slots.norm(dim=-1).max()) <= hull.radius + 1e-5
    assert bool(((slots >= hull.low - 1e-6) & (slots <= hull.high + 1e-6)).all())
    assert bounded.losses[-1] < bounded.losses[0]  # still an attack: it moves within the hull
    # the embeddings fed to the encoder are those slots, the prompt's own tokens untouched
    assert torch.equal(bounded.token_embeds[bounded.adv_mask], slots.reshape(-1, slots.shape[-1]))


def test_soft_prompt_attack_passes_its_bound_on():
    assert build_attack("soft_prompt", bound="vocab").config.bound == "vocab"
    assert build_attack("soft_prompt").config.bound == "none"  # default: free embeddings, as published
    with pytest.raises(ValueError, match="bound"):
        build_attack("soft_prompt", bound="ball")


@pytest.mark.parametrize("mode", ["continuous", "discrete"])
def test_micro_batches_give_the_same_attack(enc, tok, mode):
    """micro_batch: each step back-propagates 2 prompts at a time (chunks 2 + 1 here) and ends exactly where the
    whole-batch attack ends; loss_fn learns which prompts each chunk holds from rows=."""
    prompts = [*PROMPTS, "a green circle"]
    targets = torch.randn(len(prompts), 32, generator=torch.Generator().manual_seed(2))
    seen = []

    def per_prompt(out, rows=slice(None)):
        seen.append(rows)
        return ((out.pooled - targets[rows]) ** 2).mean(-1)

    cfg = dict(mode=mode, steps=4, lr=0.05 if mode == "continuous" else 0.01, k=2, seed=3)
    whole = PromptAttack(enc, tok, PromptAttackConfig(**cfg)).run(prompts, per_prompt)
    assert all(r == slice(None) for r in seen)
    seen.clear()
    chunked = PromptAttack(enc, tok, PromptAttackConfig(**cfg, micro_batch=2)).run(prompts, per_prompt)
    assert slice(0, 2) in seen and slice(2, 3) in seen
    assert chunked.losses == pytest.approx(whole.losses, rel=1e-5)
    torch.testing.assert_close(chunked.state.variable, whole.state.variable, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(chunked.token_embeds, whole.token_embeds, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="one loss per prompt"):
        PromptAttack(enc, tok, PromptAttackConfig(**cfg, micro_batch=2)).run(
            prompts, lambda out, rows=slice(None): ((out.pooled - targets[rows]) ** 2).mean())


def test_config_errors_teach():
    with pytest.raises(ValueError, match="mode"):
        PromptAttackConfig(mode="pgd")
    with pytest.raises(ValueError, match="k must be"):
        PromptAttackConfig(k=0)
    with pytest.raises(ValueError, match="discrete"):
        PromptAttackConfig(mode="discrete", eps=0.1)
    with pytest.raises(ValueError, match="bound='none' with mode='discrete'"):
        PromptAttackConfig(mode="discrete", bound="vocab")
    with pytest.raises(ValueError, match="bound='none' with mode='gcg'"):
        PromptAttackConfig(mode="gcg", bound="vocab")
    with pytest.raises(ValueError, match="eps=None with mode='gcg'"):
        PromptAttackConfig(mode="gcg", eps=0.1)
    with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
        PromptAttackConfig(mode="gcg", candidates=0)
    with pytest.raises(ValueError, match="eval_batch must be an integer >= 1"):
        PromptAttackConfig(mode="gcg", eval_batch=0)
    with pytest.raises(ValueError, match="choose one of"):
        PromptAttackConfig(bound="box")
    with pytest.raises(ValueError, match="micro_batch must be"):
        PromptAttackConfig(micro_batch=-1)
    assert "L-inf" in PromptAttackConfig.help()["eps"]
    with pytest.raises(ValueError, match="warm-start"):
        cfg = PromptAttackConfig(mode="discrete", init="warm", steps=1)
        PromptAttack(None, load_clip_tokenizer(), cfg)._init_variable(
            1, AttackState("continuous", torch.zeros(1, 1, 4)), torch.Generator()
        )


def test_simplex_projection_and_decode(tok):
    v = torch.tensor([[0.5, 2.0, -1.0], [0.2, 0.2, 0.2]])
    p = project_to_simplex(v)
    assert torch.allclose(p.sum(-1), torch.ones(2)) and (p >= 0).all()
    assert torch.allclose(p[0], torch.tensor([0.0, 1.0, 0.0]))
    assert decode_ids(tok, tok("a five-pointed star, please!").input_ids) == "a five - pointed star , please !"


def test_fast_simplex_projection_is_exact():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, 2000, generator=g)
    v[0] *= 0.001  # wide support: falls back to a full sort
    v[1, :, :3] += 10  # tiny support: top-k path
    ref = project_to_simplex(v, support_hint=2000)
    fast = project_to_simplex(v, support_hint=16)
    assert torch.allclose(ref, fast, atol=1e-6)
    assert torch.allclose(fast.sum(-1), torch.ones(3, 5), atol=1e-5)


def test_token_search_never_gets_worse_and_stays_real(enc, tok):
    from robust_encoders.attacks import TokenSearch, TokenSearchConfig

    goal = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))

    def loss(out, rows):  # deterministic, so the kept tokens' loss can only go down
        return ((out.pooled - goal[rows]) ** 2).mean(-1)

    search = TokenSearch(enc, tok, PROMPTS, TokenSearchConfig(k=3, candidates=8, topk=16, seed=1))
    history = [search.step(loss).clone() for _ in range(6)]
    for a, b in zip(history, history[1:], strict=False):
        assert (b <= a + 1e-6).all()
    assert float(history[-1].sum()) < float(history[0].sum())
    ids = tokenize(tok, search.texts)
    assert torch.equal(ids, search.input_ids)
    real = ((enc(ids).pooler_output - goal) ** 2).mean(-1)
    assert torch.allclose(real, history[-1], atol=1e-5)
    search.keep([1])
    assert search.batch == 1 and search.texts[0].endswith(PROMPTS[1])


def test_token_gradient_is_the_one_hot_gradient(enc, tok):
    """GCG's token scores equal autograd through an explicit one-hot choice over the search vocabulary."""
    from robust_encoders.attacks import TokenSearch, TokenSearchConfig
    from robust_encoders.core.text import encode_from_token_embeds

    goal = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))

    def loss(out, rows):
        return ((out.pooled - goal[rows]) ** 2).mean(-1)

    search = TokenSearch(enc, tok, PROMPTS, TokenSearchConfig(k=3, seed=4))
    flags = [p.requires_grad for p in enc.parameters()]
    fast = search.token_gradient(loss)
    assert [p.requires_grad for p in enc.parameters()] == flags  # the encoder's own flags come back
    weight = enc.get_input_embeddings().weight.detach()
    onehot = torch.nn.functional.one_hot(search.cur, len(search.vocab)).float().requires_grad_(True)
    emb = weight[search.ids].clone()
    emb[search.mask] = (onehot @ weight[search.vocab]).reshape(-1, weight.shape[1])
    loss(encode_from_token_embeds(enc, emb, search.ids), torch.arange(2)).sum().backward()
    assert fast.shape == onehot.grad.shape == (2, 3, len(search.vocab))
    assert torch.allclose(fast, onehot.grad, atol=1e-6, rtol=1e-5)
