"""The benchmark scripts: evaluate_concepts completes an existing table instead of recomputing it; train_speed's
tensor-memory measure counts live tensors; robustness_curve scores each checkpoint's own weights."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from _tiny import TINY_TRAIN

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _script(name: str):
    """A bench/ script loaded as a module by path (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_uda_k_column_is_added_to_an_existing_row_without_recomputing_it(tmp_path):
    bench = _script("evaluate_concepts")
    common = ["--concepts", "star", "--rows", "original", "--n-prompts", "2", "--n-retain", "0",
              "--attacks", "synonym", "--out", str(tmp_path), "--eval-set", "unlearndiffatk.steps=1"]
    assert bench.main(common + ["--uda-k", "0"]) == 0
    path = tmp_path / "star-original.json"
    first = json.loads(path.read_text())
    assert set(first["asr"]) == {"synonym"}
    first["asr"]["synonym"] = 0.123  # a marker: reusing the row must keep it
    path.write_text(json.dumps(first))

    assert bench.main(common + ["--uda-k", "5"]) == 0
    second = json.loads(path.read_text())
    assert second["asr"]["synonym"] == 0.123
    assert 0.0 <= second["asr"]["unlearndiffatk k=5"] <= 1.0
    assert second["timing_s"]["unlearndiffatk k=5"] > 0
    saved = json.loads((tmp_path / "star-original" / "unlearndiffatk-k5" / "result.json").read_text())
    assert saved["config"]["attack_configs"]["unlearndiffatk"]["k"] == 5
    assert "ASR unlearndiffatk k=5" in (tmp_path / "evaluate_concepts.md").read_text()


def test_bounded_soft_prompt_column_is_added_like_the_uda_k_one(tmp_path):
    bench = _script("evaluate_concepts")
    common = ["--concepts", "star", "--rows", "original", "--n-prompts", "2", "--n-retain", "0", "--uda-k", "0",
              "--attacks", "synonym", "--out", str(tmp_path), "--eval-set", "soft_prompt.steps=2",
              "--eval-set", "soft_prompt.check_every=1"]
    assert bench.main(common) == 0
    assert bench.main(common + ["--soft-bound", "vocab"]) == 0
    row = json.loads((tmp_path / "star-original.json").read_text())
    assert set(row["asr"]) == {"synonym", "soft_prompt vocab"}
    saved = json.loads((tmp_path / "star-original" / "soft_prompt-vocab" / "result.json").read_text())
    assert saved["config"]["attack_configs"]["soft_prompt"]["bound"] == "vocab"
    assert saved["config"]["attack_configs"]["soft_prompt"]["steps"] == 2  # --eval-set still applies
    assert "ASR soft_prompt vocab" in (tmp_path / "evaluate_concepts.md").read_text()


def test_tensor_peak_counts_live_tensors_not_everything_ever_allocated():
    """train_speed.tensor_peak_mb: the peak of live CPU tensor memory (frees count), and fn's own result."""
    import torch

    def fn():
        a = torch.ones(1_000_000)  # 4 MB
        b = torch.ones(2_000_000)  # 8 MB: 12 MB live
        del a
        c = torch.ones(500_000)  # 10 MB live
        return float(b.sum() + c.sum())

    result, peak = _script("train_speed").tensor_peak_mb(fn)
    assert result == 2_500_000.0
    assert 12_000_000 / 2**20 <= peak < 12_100_000 / 2**20  # not 14 MB (everything allocated), not 8 (no sum)


def test_bench_rows_train_what_they_were_measured_with():
    """The rows measured before the soft + GCG chains became the default stay on one soft chain (naming attack.mode
    drops the recipe's GCG chain); `ours` and its train_speed variants follow the recipe."""
    from robust_encoders.training import resolve_config

    rows = _script("evaluate_concepts").ROWS
    speed = _script("train_speed")
    attack = {name: resolve_config("star", ov).attack for name, ov in
              {**rows, "speed reference": speed.ADVUNLEARN, **speed.VARIANTS}.items()}
    for name in ("advunlearn", "fast", "lora", "ours+derived", "speed reference", "ours, one soft chain"):
        assert len(attack[name].modes) == 1, name
    assert (attack["advunlearn"].steps_per_chain, attack["speed reference"].steps_per_chain) == ([30], [30])
    assert (attack["fast"].modes, attack["fast"].steps_per_chain) == (["continuous"], [4])
    assert attack["ours"].modes == attack["ours+anchor"].modes == ["continuous", "gcg"]
    assert attack["ours, 16 soft steps"].steps_per_chain == [16, 2]
    assert attack["ours, 1-step GCG chain"].steps_per_chain == [8, 1]


def test_reference_holds_advunlearn_s_extra_copies():
    """train_speed's reference row holds what AdvUnlearn's script loads beyond our trainer's two UNets and two encoders:
    three VAEs (the pipeline's and two independent copies; an SD-sized one where the pipeline has none) and a third
    encoder, each its own tensors."""
    from argparse import Namespace

    from robust_encoders.miniature import load_pipeline

    bench = _script("train_speed")
    pipe = load_pipeline()
    vae, vae2, vae3, te = bench.advunlearn_extra_copies(pipe)
    assert vae is pipe.vae and vae2 is not vae and vae3 is not vae2
    ptrs = {id(m): {p.data_ptr() for p in m.parameters()} for m in (vae, vae2, vae3, te, pipe.text_encoder)}
    assert not ptrs[id(vae)] & ptrs[id(vae2)] and not ptrs[id(vae2)] & ptrs[id(vae3)]
    assert not ptrs[id(te)] & ptrs[id(pipe.text_encoder)]
    assert all(a.equal(b) for a, b in zip(te.parameters(), pipe.text_encoder.parameters(), strict=True))
    sd_vae = bench.advunlearn_extra_copies(Namespace(text_encoder=pipe.text_encoder))[0]
    assert 83_000_000 < sum(p.numel() for p in sd_vae.parameters()) < 84_000_000  # SD's VAE: 83.7M


def test_reference_time_at_the_expected_ddim_draws():
    """The reference draws a random DDIM stop per iteration: its time is taken with the expected number of sampling
    calls at the measured cost per call, not the few draws of the timed iterations (the first is not timed; a pooled
    sampler has no draws to correct)."""
    bench = _script("train_speed")
    steps = [{"time_s": 9.0, "t_sample": 5.0, "unet_calls": 99},  # iteration 1: not timed
             {"time_s": 2.0, "t_sample": 0.5, "unet_calls": 40}, {"time_s": 4.0, "t_sample": 2.5, "unet_calls": 80}]
    pools = {"forget": {"calls": 100, "seconds": 2.0, "size": 0}, "retain": {"calls": 100, "seconds": 3.0, "size": 0},
             "pooled": {"calls": 10, "seconds": 50.0, "size": 16}}
    t, calls = bench.reference_at_expected_sampling({"steps": steps, "pools": pools}, ddim_steps=9)
    assert calls == [40, 80]
    # mean 3.0 s, of which 1.5 s sampling; expected sampling (9 + 1) / 2 calls x (0.02 + 0.03) s = 0.25 s
    assert t == pytest.approx(3.0 - 1.5 + 0.25)


def test_robustness_curve_scores_each_checkpoint_and_extends_a_run(tmp_path):
    """Every checkpoint's own weights are evaluated (not the final ones), results are cached, and a longer
    --iterations resumes the cached run and adds only the new points."""
    import torch
    from safetensors.torch import load_file

    from robust_encoders.miniature import load_pipeline
    from robust_encoders.training.checkpoint import list_checkpoints

    curve = _script("robustness_curve")
    tiny = [*TINY_TRAIN, "optim.lr=1e-2"]
    common = ["--concept", "star", "--seeds", "0", "--every", "1", "--min-step", "1", "--attacks", "synonym",
              "--eval-set", "synonym.max_variants=1", "--n-prompts", "2", "--runs-dir", str(tmp_path / "runs"),
              "--out", str(tmp_path / "out"), *[f"--train-set={t}" for t in tiny]]
    assert curve.main([*common, "--iterations", "2"]) == 0
    run = tmp_path / "runs" / "star-s0"
    steps = [s for s, _ in list_checkpoints(run)]
    assert steps == [1, 2]
    cache = tmp_path / "out" / "robustness_curve" / "star-s0.json"
    first = json.loads(cache.read_text())
    assert set(first) == {"1", "2"} and 0.0 <= first["1"]["asr"]["synonym"] <= 1.0
    first["1"]["asr"]["synonym"] = 0.123  # a marker: a cached point is not re-run
    cache.write_text(json.dumps(first))

    pipe = load_pipeline()
    at1 = curve.encoder_at(pipe.text_encoder, list_checkpoints(run)[0][1])
    final = load_file(str(run / "text_encoder" / "model.safetensors"))
    trained = json.loads((list_checkpoints(run)[0][1] / "state.json").read_text())["trainable_names"]
    name = next(n for n in trained if "weight" in n and "layer_norm" not in n)
    assert not torch.equal(dict(at1.named_parameters())[name], final[name])  # step 1 is not the final weights
    assert torch.equal(dict(curve.encoder_at(pipe.text_encoder, list_checkpoints(run)[1][1]).named_parameters())[name],
                       final[name])
    assert not torch.equal(dict(pipe.text_encoder.named_parameters())[name], dict(at1.named_parameters())[name])

    assert curve.main([*common, "--iterations", "3"]) == 0
    second = json.loads(cache.read_text())
    assert set(second) == {"1", "2", "3"} and second["1"]["asr"]["synonym"] == 0.123
    table = (tmp_path / "out" / "robustness_curve_star.md").read_text()
    assert "| 3 |" in table and "12.3%" in table and "seed 0 synonym" in table
    assert (tmp_path / "out" / "robustness_curve_star.png").stat().st_size > 0


def test_soft_slot_reach_fades_as_free_slots_grow():
    """soft_slot_reach: an encoder changed everywhere but its embeddings changes what the UNet reads at normal-sized
    slots, and less and less as the slot vectors grow (pre-LayerNorm residual stream); the original against itself
    changes nothing."""
    import copy

    import torch

    from robust_encoders.miniature import load_pipeline

    pipe = load_pipeline()
    changed = copy.deepcopy(pipe.text_encoder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in changed.named_parameters():
            if "embeddings" not in name:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    res = _script("soft_slot_reach").reach_table(pipe, {"same": pipe.text_encoder, "changed": changed},
                                                 prompt="a star", scales=(1, 100), n=16)
    assert res[1.0]["same"] == 0 and res[100.0]["same"] == 0
    assert res[1.0]["changed"] > 0.05
    assert res[100.0]["changed"] < 0.5 * res[1.0]["changed"]


def test_seed_spread_pools_prompts_over_seeds_and_reuses_evaluations(tmp_path):
    bench = _script("seed_spread")
    common = ["--concept", "star", "--variant", "tiny", "--train-seeds", "0,1", "--eval-seeds", "0,1",
              "--n-prompts", "2", "--adopt", "0=original", "--runs-dir", str(tmp_path / "runs"),
              "--out", str(tmp_path / "out"), "--eval-set", "unlearndiffatk.steps=1", "--eval-set",
              "unlearndiffatk.check_every=1", "--eval-set", "soft_prompt.steps=1", "--eval-set", "soft_prompt.check_every=1"]
    sets = [a for ov in TINY_TRAIN + ["iterations=2"] for a in ("--set", ov)]
    assert bench.main(common + sets) == 0
    assert (tmp_path / "runs" / "star-tiny-s1" / "robust_encoder.json").exists()  # seed 1 trained, seed 0 adopted
    assert not (tmp_path / "runs" / "star-tiny-s0").exists()
    folders = sorted(p.name for p in (tmp_path / "out" / "star-tiny").iterdir() if p.is_dir())
    assert folders == [f"s{s}-e{e}-{a}" for s in (0, 1) for e in (0, 1)
                       for a in ("soft_prompt-vocab", "unlearndiffatk-5")]
    saved = json.loads((tmp_path / "out" / "star-tiny" / "s1-e1-unlearndiffatk-5" / "result.json").read_text())
    assert saved["seed"] == 1 and saved["config"]["attack_configs"]["unlearndiffatk"]["k"] == 5
    # the original encoder draws the concept for (nearly) every prompt; mark one evaluation and rerun: the table is
    # rebuilt from the saved results (nothing recomputed) and pools the prompts of both evaluation seeds
    for s, e, hits in ((0, 0, 0), (0, 1, 1)):
        path = tmp_path / "out" / "star-tiny" / f"s{s}-e{e}-unlearndiffatk-5" / "result.json"
        res = json.loads(path.read_text())
        res["asr"]["unlearndiffatk"] = hits / 2
        path.write_text(json.dumps(res))
    assert bench.main(common + sets) == 0
    summary = json.loads((tmp_path / "out" / "star-tiny" / "summary.json").read_text())
    assert summary["unlearndiffatk k=5"]["per_seed"]["0"] == 0.25 and summary["unlearndiffatk k=5"]["prompts"] == 8
    table = (tmp_path / "out" / "star-tiny.md").read_text()
    assert "| 0 | 0.0% / 50.0% |" in table and table.count("python ") == 1  # the same command is listed once
    # the plain prompts' rate is pooled the same way, from the attacks' own evaluations
    pre = {s: [json.loads((tmp_path / "out" / "star-tiny" / f"s{s}-e{e}-unlearndiffatk-5" / "result.json")
                          .read_text())["pre_asr"] for e in (0, 1)] for s in (0, 1)}
    assert summary["Pre-ASR"]["per_seed"] == {str(s): sum(v) / 2 for s, v in pre.items()}
    assert summary["Pre-ASR"]["prompts"] == 8 and "Pre-ASR (plain prompts" in table
    # the two attacks' evaluations of one (seed, evaluation seed) must agree on it
    path = tmp_path / "out" / "star-tiny" / "s1-e0-soft_prompt-vocab" / "result.json"
    res = json.loads(path.read_text())
    res["pre_asr"] = 1.0 - res["pre_asr"]
    path.write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="disagree on the Pre-ASR"):
        bench.main(common + sets)
    res["pre_asr"] = 1.0 - res["pre_asr"]
    path.write_text(json.dumps(res))
    # a cached run trained with other settings than the variant now gives (say, after a recipe default changed) is
    # not reused for new evaluations
    more = [a if a != "0,1" or i != common.index("--eval-seeds") + 1 else "2" for i, a in enumerate(common)]
    with pytest.raises(SystemExit, match="retain.weight: 2.0 -> 0.5"):
        bench.main(more + sets + ["--set", "retain.weight=0.5"])
