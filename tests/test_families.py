"""Every SD family: SD 2.x- and SDXL-shaped tiny pipelines through training, export, loading, applying, evaluation.

The pipelines are the seeded tiny ones of ``_tiny.py`` (real diffusers / transformers classes, miniature sizes); every
training run is 2 iterations of the AdvUnlearn recipe with a 2-step attack, well under a few seconds on a CPU.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from _tiny import build_sd1_pipe, build_sd2_pipe, build_sdxl_pipe, prompt_embeds
from robust_encoders import apply_robust_encoder, load_robust_encoder
from robust_encoders.core.text import TextEncoderPair, encode_ids, tokenize
from robust_encoders.loading import CompatibilityWarning, IncompatibleEncoderError
from robust_encoders.training import ConfigError, Trainer, load_recipe

RECIPE = "recipes/advunlearn_sd14.yaml"
TINY = [
    "iterations=2", "concept.name=church", "concept.kind=object", "unlearn.ddim_steps=4", "unlearn.batch_size=2",
    "sampling.pool=2", "sampling.retain_pool=2", "sampling.refresh=1", "sampling.refresh_every=2",
    "attack.warmup=1", "attack.steps=2", "retain.batch_size=2", "log.progress=false", "optim.lr=1e-2",
    "model.base_model=tiny-test-pipeline",  # a label for runs on a given pipeline object (later overrides win)
]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train(tmp_path, *overrides, pipeline=None, name="run"):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cfg = load_recipe(root / RECIPE, [*TINY, *overrides])
    return Trainer(cfg, tmp_path / name, pipeline=pipeline).run()


def _log(run) -> list[dict]:
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def _sdxl_folder(tmp_path):
    pipe = build_sdxl_pipe()
    pipe.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


# ------------------------------------------------------------------------------------------------ text side
@pytest.mark.parametrize("pad_2", [None, "!"])
def test_pair_encodes_exactly_like_the_sdxl_pipeline(pad_2):
    """Penultimate states of both encoders side by side + encoder 2's projected pooled output, as diffusers does;
    real SDXL pads tokenizer_2 with '!' (id 0), which the pair reproduces from tokenizer 1's ids."""
    pipe = build_sdxl_pipe()
    if pad_2:
        pipe.tokenizer_2.pad_token = pad_2
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt("a photo of a church", device="cpu", num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        out = encode_ids(TextEncoderPair.from_pipeline(pipe), tokenize(pipe.tokenizer, ["a photo of a church"]))
    assert out.last_hidden_state.shape[-1] == pipe.unet.config.cross_attention_dim
    assert torch.equal(out.last_hidden_state, embeds)
    assert torch.equal(out.text_embeds, pooled)


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_two_steps_change_only_the_encoders(tmp_path, family):
    pipe = build_sd2_pipe() if family == "sd2" else build_sdxl_pipe()
    slots = ["text_encoder"] + (["text_encoder_2"] if family == "sdxl" else [])
    before = {name: _state(getattr(pipe, name)) for name in ("unet", "vae", *slots)}
    run = _train(tmp_path, pipeline=pipe)
    for name in ("unet", "vae", *slots):  # the pipeline's own modules: untouched, bit for bit
        after = _state(getattr(pipe, name))
        assert all(torch.equal(before[name][k], after[k]) for k in after), name
    info = json.loads((run / "robust_encoder.json").read_text())
    assert info["encoders"] == slots
    if family == "sdxl":
        assert info["base_families"] == ["sdxl"]
    log = _log(run)
    assert "attack_loss" in log[1] and "attack_loss" not in log[0]  # the attack ran after its warm-up
    for slot in slots:
        trained = load_robust_encoder(run / slot)
        assert type(trained) is type(getattr(pipe, slot))
        sd = trained.state_dict()
        changed = [k for k in sd if not torch.equal(sd[k], before[slot][k])]
        assert any(".layers." in k for k in changed), f"{slot} did not learn"
        assert not any("embeddings" in k for k in changed)  # AdvUnlearn keeps token / position embeddings frozen


def test_sdxl_can_train_one_encoder_only(tmp_path):
    pipe = build_sdxl_pipe()
    te_1 = _state(pipe.text_encoder)
    run = _train(tmp_path, "model.encoders=text_encoder_2", pipeline=pipe)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("text_encoder")) == ["text_encoder_2"]
    assert json.loads((run / "robust_encoder.json").read_text())["encoders"] == ["text_encoder_2"]
    target = build_sdxl_pipe()
    first = target.text_encoder
    apply_robust_encoder(target, run)  # swaps only the trained one
    assert target.text_encoder is first and all(torch.equal(v, te_1[k]) for k, v in first.state_dict().items())
    assert not torch.equal(target.text_encoder_2.state_dict()["text_model.encoder.layers.0.mlp.fc1.weight"],
                           pipe.text_encoder_2.state_dict()["text_model.encoder.layers.0.mlp.fc1.weight"])


def test_one_encoder_pipelines_have_no_text_encoder_2_to_train(tmp_path):
    with pytest.raises(ConfigError, match="only SDXL has a text_encoder_2"):
        _train(tmp_path, "model.encoders=text_encoder_2", pipeline=build_sd2_pipe())


# ------------------------------------------------------------------------------------------------ export / load / apply
@pytest.mark.parametrize("part", ["all", "lora"])
def test_sdxl_run_exports_loads_and_applies_as_a_pair(tmp_path, part):
    """Train from a saved SDXL pipeline folder, export, and swap the exported pair into a fresh pipeline: it then
    conditions its UNet exactly like the trained encoders do."""
    from robust_encoders.hub import export_run

    base = _sdxl_folder(tmp_path)
    run = _train(tmp_path, f"model.base_model={base}", f"trainable.part={part}")
    out = export_run(run, tmp_path / "export")
    assert (out / "text_encoder").is_dir() and (out / "text_encoder_2").is_dir()
    meta = json.loads((out / "robust_encoder.json").read_text())
    assert meta["base_families"] == ["sdxl"] and meta["format"] == ("lora" if part == "lora" else "full")

    trained = {slot: load_robust_encoder(run, subfolder=slot) for slot in ("text_encoder", "text_encoder_2")}
    pipe = build_sdxl_pipe()
    original = prompt_embeds(pipe)
    apply_robust_encoder(pipe, out)
    swapped = prompt_embeds(pipe)
    assert not torch.allclose(swapped, original)
    with torch.no_grad():
        pair = TextEncoderPair(trained["text_encoder"], trained["text_encoder_2"])
        expected = encode_ids(pair, tokenize(pipe.tokenizer, ["a photo of a church"])).last_hidden_state
    torch.testing.assert_close(swapped, expected, atol=1e-5, rtol=1e-5)
    from robust_encoders.loading import encoder_info

    assert encoder_info(pipe.text_encoder_2)["families"] == ("sdxl",)  # read from the export's robust_encoder.json


def test_half_a_pair_or_an_sd2_run_does_not_go_into_sdxl(tmp_path):
    sd2_run = _train(tmp_path, pipeline=build_sd2_pipe(), name="sd2")
    pipe = build_sdxl_pipe()
    snapshot = prompt_embeds(pipe)
    with pytest.raises(IncompatibleEncoderError, match="needs 2 text encoders"):
        apply_robust_encoder(pipe, sd2_run / "text_encoder")
    assert torch.equal(prompt_embeds(pipe), snapshot)


def test_family_metadata_warns_within_a_family_and_refuses_across(tmp_path):
    """A run records its base and family; an SD 1.4 encoder goes into SD 1.5 with a warning, and is refused by a
    pipeline of another family even where the (tiny) shapes would fit."""
    run = _train(tmp_path, "model.base_model=CompVis/stable-diffusion-v1-4", pipeline=build_sd1_pipe())
    info = json.loads((run / "robust_encoder.json").read_text())
    assert info["base_model"] == "CompVis/stable-diffusion-v1-4" and info["base_families"] == ["sd1"]

    sd15 = build_sd1_pipe()
    sd15.register_to_config(_name_or_path="runwayml/stable-diffusion-v1-5")
    with pytest.warns(CompatibilityWarning, match="CompVis/stable-diffusion-v1-4.*runwayml/stable-diffusion-v1-5"):
        apply_robust_encoder(sd15, run)

    sd2 = build_sd1_pipe()  # SD-1-shaped, but named as an SD 2.x pipeline
    sd2.register_to_config(_name_or_path="stabilityai/stable-diffusion-2-1")
    kept = sd2.text_encoder
    with pytest.raises(IncompatibleEncoderError, match="trained for SD 1.x.*is SD 2.x.*not changed"):
        apply_robust_encoder(sd2, run)
    assert sd2.text_encoder is kept

    same = build_sd1_pipe()
    same.register_to_config(_name_or_path="CompVis/stable-diffusion-v1-4")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompatibilityWarning)  # its own base: no warning
        apply_robust_encoder(same, run)


# ------------------------------------------------------------------------------------------------ evaluation
class _NeverChurch:
    """A user detector that never sees the concept, so every prompt goes on to the attacks."""

    name = "never"
    heads = {"object": ("church", "tree")}

    def predict(self, images):
        return {"object": torch.ones(images.shape[0], dtype=torch.long)}

    def detect(self, images, concept):
        return torch.zeros(images.shape[0], dtype=torch.bool)


def test_sdxl_model_generates_what_the_pipeline_generates():
    from robust_encoders.attacks.sd import SDModel

    pipe = build_sdxl_pipe()
    model = SDModel(pipe, steps=2, guidance=5.0)
    got = model.generate(model.original_encoder, ["a photo of a church"], seeds=[3], return_latents=True)
    ref = pipe("a photo of a church", num_inference_steps=2, guidance_scale=5.0, output_type="latent",
               generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(got.latents, ref)


def test_evaluation_suite_runs_on_tiny_sdxl():
    from robust_encoders.attacks import concept_spec
    from robust_encoders.evaluation import EvalConfig, PromptItem, evaluate_encoder

    pipe = build_sdxl_pipe()
    erased = TextEncoderPair.from_pipeline(build_sdxl_pipe(seed=1))  # any other pair of encoders
    items = [PromptItem("a church in a field", seed=1, guidance=5.0), PromptItem("an old church", seed=2)]
    cfg = EvalConfig(concept="church", n_prompts=2, n_retain=0, steps=2, batch_size=2, progress=False,
                     attacks=("unlearndiffatk", "soft_prompt", "synonym"),
                     attack_overrides={"unlearndiffatk": {"steps": 2, "check_every": 2, "candidates": 4, "topk": 8},
                                       "soft_prompt": {"steps": 2, "check_every": 2}, "synonym": {"max_variants": 1}})
    res = evaluate_encoder(erased, pipe=pipe, detector=_NeverChurch(), config=cfg, forget_items=items,
                           retain_items=[], concept=concept_spec("church"))
    s = res.summary
    assert s["n_prompts"] == 2 and s["pre_asr"] == 0.0 and s["asr"] == {
        "unlearndiffatk": 0.0, "soft_prompt": 0.0, "synonym": 0.0}
    for rec in res.details["forget"]:
        for name in ("unlearndiffatk", "soft_prompt"):
            assert rec["attacks"][name]["queries"] >= 1 and rec["attacks"][name]["steps"] == 2
            assert rec["attacks"][name]["loss"] is not None
    assert res.grid["forget"][0][1]["erased"].shape == (3, 32, 32)
    with pytest.raises(TypeError, match="two text encoders"):
        evaluate_encoder(pipe.text_encoder, pipe=pipe, detector=_NeverChurch(), config=cfg, forget_items=items,
                         retain_items=[], concept=concept_spec("church"))
