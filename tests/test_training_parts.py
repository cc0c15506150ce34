"""Diffusion helpers against the real diffusers pipeline, trainable-part selection, LoRA, checkpoint state."""

from __future__ import annotations

import pytest
import torch

from robust_encoders.core.diffusion import Conditioning, cfg_eps, ddim_trajectory, predict_eps
from robust_encoders.core.text import encode_ids, tokenize
from robust_encoders.training import LoraTargetError, TrainableConfig, make_trainable
from robust_encoders.training.config import LoraSettings


@pytest.fixture(scope="module")
def pipe():
    from robust_encoders.miniature import load_pipeline

    return load_pipeline()


def _embeds(pipe, prompts):
    with torch.no_grad():
        return encode_ids(pipe.text_encoder, tokenize(pipe.tokenizer, prompts)).last_hidden_state


def test_ddim_trajectory_matches_the_pipeline(pipe):
    cond, uncond = _embeds(pipe, ["a red star", "a blue heart"]), _embeds(pipe, ["", ""])
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = []

    def grab(p, i, t, kw):
        seen.append(kw["latents"].clone())
        return kw

    pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise.clone(), num_inference_steps=6,
         guidance_scale=3.0, output_type="latent", callback_on_step_end=grab,
         callback_on_step_end_tensor_inputs=["latents"])
    traj = ddim_trajectory(pipe.unet, pipe.scheduler, cond, uncond[:1], num_inference_steps=6, guidance_scale=3.0,
                           latents=noise)
    assert traj.latents.shape == (6, 2, 4, 16, 16) and traj.timesteps.tolist()[0] > traj.timesteps.tolist()[-1]
    for i in range(5):  # the pipeline's latents after step i are the trajectory's input to step i + 1
        torch.testing.assert_close(traj.latents[i + 1], seen[i], atol=1e-4, rtol=1e-4)
    # the recorded predictions are the frozen model's eps at each visited x_t: cached targets need no UNet pass
    with torch.no_grad():
        e_c = predict_eps(pipe.unet, traj.latents[3], traj.timesteps[3], cond)
        _, e_c2, e_u2 = cfg_eps(pipe.unet, traj.latents[3], traj.timesteps[3], Conditioning(cond), uncond[:1], 3.0)
    torch.testing.assert_close(traj.eps_cond[3], e_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(traj.eps_uncond[3], e_u2, atol=1e-5, rtol=1e-5)
    # stopping early gives the same prefix (ESD's quick_sample_till_t)
    short = ddim_trajectory(pipe.unet, pipe.scheduler, cond, uncond[:1], num_inference_steps=6, guidance_scale=3.0,
                            latents=noise, stop_at=2)
    assert short.num_steps == 3
    torch.testing.assert_close(short.latents[2], traj.latents[2])


def test_per_row_generators_make_rows_independent_of_batch(pipe):
    cond, uncond = _embeds(pipe, ["a star", "a cross"]), _embeds(pipe, [""])
    g = lambda i: torch.Generator().manual_seed(100 + i)  # noqa: E731
    both = ddim_trajectory(pipe.unet, pipe.scheduler, cond, uncond, num_inference_steps=3, guidance_scale=3.0,
                           generator=[g(0), g(1)], stop_at=0)
    one = ddim_trajectory(pipe.unet, pipe.scheduler, cond[1:], uncond, num_inference_steps=3, guidance_scale=3.0,
                          generator=[g(1)], stop_at=0)
    torch.testing.assert_close(both.latents[0, 1], one.latents[0, 0])


def _names(cfg, pipe):
    import copy

    _, names = make_trainable(copy.deepcopy(pipe.text_encoder), cfg)
    return names


def test_trainable_parts(pipe):
    n_layers = pipe.text_encoder.config.num_hidden_layers
    all_ = _names(TrainableConfig(part="all"), pipe)
    assert all_ and not [n for n in all_ if "embeddings" in n]  # embeddings frozen by default
    assert any("final_layer_norm" in n for n in all_)
    assert any("embeddings" in n for n in _names(TrainableConfig(part="all", train_embeddings=True), pipe))
    first = _names(TrainableConfig(part="first_k", layers=1), pipe)
    assert first and all(n.startswith("encoder.layers.0.") for n in first)
    attn = _names(TrainableConfig(part="attention"), pipe)
    assert attn and all(".self_attn." in n for n in attn)
    mlp = _names(TrainableConfig(part="mlp"), pipe)
    assert mlp and all(".mlp." in n for n in mlp)
    with pytest.raises(ValueError, match=f"only {n_layers} layers"):
        _names(TrainableConfig(part="first_k", layers=n_layers + 1), pipe)


def test_lora_trains_only_adapters_and_names_missing_targets(pipe):
    import copy

    te = copy.deepcopy(pipe.text_encoder)
    model, names = make_trainable(te, TrainableConfig(part="lora", lora=LoraSettings(rank=2, targets=["q_proj", "v_proj"])))
    assert names and all("lora_" in n for n in names)
    ids = tokenize(pipe.tokenizer, ["a red star"])
    torch.testing.assert_close(encode_ids(model.get_base_model(), ids).last_hidden_state, _embeds(pipe, ["a red star"]))
    with pytest.raises(LoraTargetError, match=r"'qproj' \(did you mean 'q_proj'\?\).*Available targets: fc1, fc2"):
        make_trainable(copy.deepcopy(pipe.text_encoder), TrainableConfig(part="lora", lora=LoraSettings(targets=["qproj"])))


def test_optimizer_and_rng_state_round_trip():
    import random

    import numpy as np

    from robust_encoders.training import checkpoint as ck

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    p.sum().backward()
    opt.step()
    tensors, meta = ck.flatten_optimizer_state(opt.state_dict())
    opt2 = torch.optim.Adam([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(ck.unflatten_optimizer_state(tensors, meta))
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k])
    t, m = ck.capture_rng()
    a = (torch.rand(2), np.random.rand(), random.random())
    ck.restore_rng(t, m)
    b = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_cycled_pool_draws_every_prompt_equally_often(pipe):
    """sampling.prompt_order=cycle: new pooled trajectories go through the prompt set in seeded passes (each prompt
    once per pass, passes straddling refresh chunks), as a pure function of the chunk (a resumed run rebuilds it);
    the trajectories are generated for exactly those prompts."""
    from collections import Counter

    from robust_encoders.training.config import ConfigError
    from robust_encoders.training.sampling import TrajectoryPool, derived_generator
    from robust_encoders.training.trainer import resolve_config

    prompts = [f"a {c} star" for c in ("red", "green", "blue", "yellow", "purple", "plain", "striped")]

    def cond(idx):
        return Conditioning(_embeds(pipe, [prompts[i] for i in idx]))

    def pool(order, seed=2):
        return TrajectoryPool("forget", prompts, cond, Conditioning(_embeds(pipe, [""])), pipe.unet, pipe.scheduler,
                              (4, 8, 8), ddim_steps=2, guidance=3.0, size=6, refresh=3, refresh_every=1, seed=seed,
                              prompt_order=order)

    cycled = pool("cycle")
    draws = [cycled.chunk_prompts(j).tolist() for j in range(14)]  # 42 draws: 6 passes of 7 prompts
    assert sorted(Counter(i for d in draws for i in d).values()) == [6] * 7
    assert [pool("cycle").chunk_prompts(j).tolist() for j in range(14)] == draws  # no state: resumable
    assert draws != [pool("cycle", seed=0).chunk_prompts(j).tolist() for j in range(14)]
    random_counts = Counter(i for j in range(14) for i in pool("random").chunk_prompts(j).tolist())
    assert len(set(random_counts.values())) > 1  # independent draws: some prompts more often than others
    traj, idx = cycled._chunk(1)
    assert idx.tolist() == draws[1]
    expected = ddim_trajectory(pipe.unet, pipe.scheduler, cond(draws[1]), Conditioning(_embeds(pipe, [""])),
                               num_inference_steps=2, guidance_scale=3.0, shape=(3, 4, 8, 8),
                               generator=[derived_generator(2, "forget", 0, "noise", 1, i) for i in range(3)])
    assert torch.allclose(traj.latents, expected.latents)
    with pytest.raises(ConfigError, match="prompt_order"):
        resolve_config("star", ["sampling.prompt_order=balanced"])
