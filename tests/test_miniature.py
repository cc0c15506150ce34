"""The miniature world: labels match drawings, shipped weights load offline, quality holds, builds are deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_encoders.miniature import (
    COLOURS,
    CONCEPTS,
    OBJECTS,
    STYLES,
    get_concept,
    load_clip,
    load_detector,
    load_pipeline,
    render_scene,
    sample_scenes,
)
from robust_encoders.miniature.captions import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, caption


def _object_mask(img: np.ndarray, threshold: float = 60) -> np.ndarray:
    """Pixels of the (saturated) object: backgrounds are grey, objects are coloured."""
    f = img.astype(np.float64)
    return (f.max(-1) - f.min(-1)) > threshold


def _hull_area(points: np.ndarray) -> float:
    pts = sorted(map(tuple, points))

    def half(seq):
        h = []
        for p in seq:
            while len(h) >= 2 and (h[-1][0] - h[-2][0]) * (p[1] - h[-2][1]) - (h[-1][1] - h[-2][1]) * (p[0] - h[-2][0]) <= 0:
                h.pop()
            h.append(p)
        return h

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    x, y = np.array(hull, dtype=float).T
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


@pytest.mark.parametrize("colour", COLOURS)
def test_drawn_colour_matches_label(colour):
    rng = np.random.default_rng(1)
    for obj in OBJECTS:
        img = render_scene(obj, colour, "plain", rng, size=64)
        mask = _object_mask(img)
        mean = img[mask].mean(0)
        dists = {c: np.linalg.norm(mean - np.array(CONCEPTS[c].rgb)) for c in COLOURS}
        assert min(dists, key=dists.get) == colour


def test_drawn_object_shape_matches_label():
    """Convex objects fill their hull; star, cross and heart do not."""
    rng = np.random.default_rng(2)
    solidity = {}
    for obj in OBJECTS:
        vals = []
        for _ in range(5):
            mask = _object_mask(render_scene(obj, "blue", "plain", rng, size=128))
            ys, xs = np.nonzero(mask)
            vals.append(mask.sum() / _hull_area(np.stack([xs, ys], 1)))
        solidity[obj] = float(np.mean(vals))
    for obj in ("circle", "square", "triangle"):
        assert solidity[obj] > 0.93, solidity
    assert solidity["star"] < 0.7, solidity
    assert solidity["cross"] < 0.8, solidity
    assert 0.8 < solidity["heart"] < 0.97, solidity


def test_drawn_style_matches_label():
    rng = np.random.default_rng(3)
    for style in STYLES:
        for _ in range(4):
            img = render_scene("circle", "red", style, rng, size=64).astype(float)
            bg = img[~_object_mask(img.astype(np.uint8), threshold=2)]  # edges count as object
            spread = bg.std()
            if style == "plain":
                assert spread < 3, spread
            else:
                assert spread > 15, (style, spread)


def test_sample_scenes_is_seeded_and_labelled():
    a, b = sample_scenes(16, seed=7), sample_scenes(16, seed=7)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.objects, b.objects)
    assert a.images.shape == (16, 32, 32, 3) and a.images.dtype == np.uint8
    assert set(a.labels(0)) <= set(OBJECTS) | set(COLOURS) | set(STYLES)


def test_captions_use_synonyms_and_heldout_templates_are_disjoint():
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)
    rng = np.random.default_rng(0)
    texts = {caption("star", "red", "dots", rng) for _ in range(200)}
    assert any("pentagram" in t for t in texts) and any("crimson" in t for t in texts)
    assert get_concept("Pentagram").name == "star"
    with pytest.raises(KeyError, match="Did you mean"):
        get_concept("strar")


def test_shipped_pipeline_loads_offline_and_generates(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline()
    assert pipe.text_encoder.config.vocab_size == 49408
    assert pipe.tokenizer("a red star").input_ids[0] == 49406
    out = pipe(["a red star on a striped background"] * 2, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (2, 32, 32, 3) and np.isfinite(out).all()


def test_build_is_seeded_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from robust_encoders.miniature.build import BuildConfig, build_world

    def run(out, steps, stages=("vae",)):
        cfg = BuildConfig(vae_steps=steps, vae_batch=8, checkpoint_every=2, stages=stages, threads=1)
        build_world(out, cfg)

    run(tmp_path / "a", 4)
    run(tmp_path / "b", 4)
    # interrupted after 2 steps: keep the checkpoint, drop the finished stage, resume to 4
    import json
    import shutil

    run(tmp_path / "c", 2)
    shutil.rmtree(tmp_path / "c" / "stages")
    cfg = json.loads((tmp_path / "c" / "build_config.json").read_text())
    cfg["vae_steps"] = 4
    (tmp_path / "c" / "build_config.json").write_text(json.dumps(cfg))
    run(tmp_path / "c", 4)
    w = [load_file(tmp_path / d / "stages" / "vae" / "diffusion_pytorch_model.safetensors") for d in "abc"]
    for k in w[0]:
        assert torch.equal(w[0][k], w[1][k]), k
        assert torch.equal(w[0][k], w[2][k]), k


def test_shipped_detector_meets_accuracy_bar():
    from robust_encoders.miniature.report import detector_accuracy

    acc = detector_accuracy(load_detector(), n=500, seed=2024)
    assert min(acc.values()) >= 0.98, acc


def test_shipped_clip_meets_zero_shot_bar():
    """The scoring CLIP names object, colour and style of held-out scenes (scenes unlike the report's seed)."""
    from robust_encoders.miniature.report import clip_accuracy
    from robust_encoders.tokenization import load_clip_tokenizer

    acc = clip_accuracy(load_clip().float(), load_clip_tokenizer(), n=500, seed=2024)
    assert min(acc["object"], acc["colour"], acc["style"]) >= 0.90, acc


def test_refine_stages_keep_the_text_encoder_and_focus_the_batches(tmp_path):
    """clip_refine / unet_refine / clip_polish continue training, the pipeline's text encoder stays frozen, and an
    older build folder (config without the refine settings) is extended rather than refused."""
    import json

    from safetensors.torch import load_file

    from robust_encoders.miniature.build import BuildConfig, build_world, focus_weights
    from robust_encoders.miniature.concepts import OBJECTS

    small = dict(vae_steps=2, vae_batch=4, detector_steps=2, detector_batch=4, clip_steps=2, clip_batch=4,
                 unet_steps=2, unet_batch=4, unet_pool=24, checkpoint_every=1, threads=1)
    out = tmp_path / "w"
    build_world(out, BuildConfig(**small, stages=("vae", "detector", "clip", "unet")))
    cfg_file = out / "build_config.json"
    old = {k: v for k, v in json.loads(cfg_file.read_text()).items() if "refine" not in k and "polish" not in k}
    cfg_file.write_text(json.dumps(old))  # as written before the refine stages existed
    te_before = load_file(out / "stages" / "text_encoder" / "model.safetensors")
    unet_before = load_file(out / "stages" / "unet" / "diffusion_pytorch_model.safetensors")

    build_world(out, BuildConfig(**small, clip_refine_steps=2, unet_refine_steps=2, clip_polish_steps=2))
    assert json.loads(cfg_file.read_text())["unet_refine_steps"] == 2
    with pytest.raises(ValueError, match="unet_refine_steps"):
        build_world(out, BuildConfig(**small, clip_refine_steps=2, unet_refine_steps=3, clip_polish_steps=2))

    refined = load_file(out / "stages" / "unet_refine" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(refined[k], unet_before[k]) for k in refined)
    shipped_te = load_file(out / "weights" / "pipeline" / "text_encoder" / "model.safetensors")
    for k, v in te_before.items():
        assert torch.equal(shipped_te[k], v.half()), k  # frozen: identical up to the fp16 cast
    shipped_unet = load_file(out / "weights" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(shipped_unet[k], refined[k].half()) for k in refined)
    assert json.loads((out / "build_timings.json").read_text()).keys() >= {"unet", "clip_refine", "unet_refine",
                                                                           "clip_polish"}
    # the shipped scoring CLIP is the last CLIP stage's, which continued clip_refine's weights
    polished = load_file(out / "stages" / "clip_polish" / "model.safetensors")
    refined_clip = load_file(out / "stages" / "clip_refine" / "model.safetensors")
    shipped_clip = load_file(out / "weights" / "clip" / "model.safetensors")
    assert all(torch.equal(shipped_clip[k], polished[k].half()) for k in polished)
    assert any(not torch.equal(polished[k], refined_clip[k]) for k in polished)

    objects = np.array([0, 1, 1, 2, 3, 4, 5, 5])
    w = focus_weights(objects, ("square",), 0.6)
    assert w[objects == OBJECTS.index("square")].sum() == pytest.approx(0.6)
    assert focus_weights(objects, (), 0.6) is None
    with pytest.raises(ValueError, match="unknown object"):
        BuildConfig(unet_refine_focus=("hexagon",))
