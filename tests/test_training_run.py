"""End-to-end training runs on the embedded miniature world (real diffusers UNet, real peft, real safetensors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _launch import accelerate_launch
from _tiny import TINY_TRAIN as TINY  # a few seconds per run
from robust_encoders.training import BaseModelUnavailableError, RunDirError, Trainer, train
from robust_encoders.training.config import ConfigError
from robust_encoders.training.trainer import resolve_config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    folder = run / "text_encoder"
    name = "adapter_model.safetensors" if (folder / "adapter_config.json").exists() else "model.safetensors"
    return load_file(str(folder / name))


def test_run_folder_contract(tmp_path):
    run = train("star", TINY + ["iterations=3", "checkpoint.every=2"], output_dir=tmp_path / "run")
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints", "config.yaml", "log.jsonl", "robust_encoder.json", "text_encoder"]
    info = json.loads((run / "robust_encoder.json").read_text())
    assert info["concept"] == "star" and info["concept_kind"] == "object" and info["method"] == "advunlearn"
    assert info["base_families"] == ["miniature"] and info["format"] == "full" and info["encoders"] == ["text_encoder"]
    assert info["recipe"] == "miniature_star" and info["iterations"] == 3 and info["trainable"] == "all"
    assert info["base_model"] == "miniature"  # portable: the loader resolves it to the packaged world
    from transformers import CLIPTextModel

    trained = CLIPTextModel.from_pretrained(run / "text_encoder")
    from robust_encoders import load_robust_encoder  # the loader reads the run folder directly

    base = load_robust_encoder(info["base_model"], torch_dtype=torch.float32)
    sd_t, sd_b = trained.state_dict(), base.state_dict()
    assert not torch.equal(sd_t["encoder.layers.0.mlp.fc1.weight"], sd_b["encoder.layers.0.mlp.fc1.weight"])
    assert torch.equal(sd_t["embeddings.token_embedding.weight"], sd_b["embeddings.token_embedding.weight"])
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log[:3]] == [1, 2, 3] and log[-1]["event"] == "done"
    assert "attack_loss" in log[1] and "attack_loss" not in log[0]  # warm-up of one iteration
    assert resolve_config(run / "config.yaml").to_dict() == resolve_config("star", TINY + ["iterations=3",
                                                                                          "checkpoint.every=2"]).to_dict()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step_0000002", "step_0000003"]
    loaded = load_robust_encoder(run / "text_encoder")
    assert torch.equal(loaded.state_dict()["encoder.layers.0.mlp.fc1.weight"], sd_t["encoder.layers.0.mlp.fc1.weight"])


class _Killed(RuntimeError):
    pass


def _crash_after(monkeypatch, steps: int, ov: list[str], run: Path) -> None:
    """Train ``run`` and kill it as step ``steps + 1`` begins (after ``steps`` iterations and their checkpoint)."""
    original = Trainer.train_step

    def dies(self, step):
        if step == steps:
            raise _Killed(f"simulated crash after the step-{steps} checkpoint")
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", dies)
    with pytest.raises(_Killed):
        train("star", ov, output_dir=run)
    monkeypatch.setattr(Trainer, "train_step", original)


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    ov = TINY + ["iterations=4", "checkpoint.every=2", "attack.every=2", "attack.init=warm"]
    full = train("star", ov, output_dir=tmp_path / "full")

    _crash_after(monkeypatch, 2, ov, tmp_path / "split")
    assert not (tmp_path / "split" / "robust_encoder.json").exists()
    with pytest.raises(RunDirError, match="--resume"):
        train("star", ov, output_dir=tmp_path / "split")
    split = train("star", ov, output_dir=tmp_path / "split", resume=True)
    a, b = _weights(full), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(ln)["step"] for ln in (split / "log.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]
    # growing `iterations` continues a finished run
    longer = train("star", [*ov, "iterations=5"], output_dir=tmp_path / "full", resume=True)
    assert json.loads((longer / "robust_encoder.json").read_text())["iterations"] == 5


def test_attack_chains_resume_bit_identical(tmp_path, monkeypatch):
    """Two warm-started adversarial chains taken in turn: both are checkpointed and continue after a resume."""
    ov = TINY + ["iterations=5", "checkpoint.every=3", "attack.every=1", "attack.init=warm", "attack.chains=2"]
    full = train("star", ov, output_dir=tmp_path / "full")
    _crash_after(monkeypatch, 3, ov, tmp_path / "split")  # its checkpoint holds chain 0 (round at step 1), chain 1 (2)
    split = train("star", ov, output_dir=tmp_path / "split", resume=True)
    a, b = _weights(full), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = _weights(train("star", [*ov[:-1], "attack.chains=1"], output_dir=tmp_path / "one"))
    assert any(not torch.equal(a[k], one[k]) for k in a)  # a second chain changes what the encoder is trained on
    with pytest.raises(RunDirError, match="attack.chains"):
        train("star", [*ov[:-1], "attack.chains=3", "iterations=6"], output_dir=tmp_path / "split", resume=True)


def test_mixed_chain_modes_alternate_threat_models_and_resume_bit_identical(tmp_path, monkeypatch):
    """attack.chain_modes=[continuous,gcg]: rounds alternate between soft tokens and real tokens, each chain keeps its
    own kind of warm-start state through a checkpoint, and the resumed run ends with the same weights."""
    ov = TINY + ["iterations=5", "checkpoint.every=3", "attack.every=1", "attack.init=warm", "attack.chains=2",
                 "attack.chain_modes=[continuous,gcg]", "attack.chain_steps=[2,1]", "attack.candidates=4",
                 "attack.topk=16", "attack.chain_k=[null,2]"]
    states, original = [], Trainer.train_step

    def recording(self, step):
        out = original(self, step)
        states.append([None if s is None else (s.mode, s.variable.dtype, s.variable.shape[1])
                       for s in self.attack_states])
        return out

    monkeypatch.setattr(Trainer, "train_step", recording)
    full = train("star", ov, output_dir=tmp_path / "full")
    monkeypatch.setattr(Trainer, "train_step", original)
    k = resolve_config("star", ov).attack.k
    assert k != 2  # each chain searches its own number of tokens (attack.chain_k)
    assert states[-1] == [("continuous", torch.float32, k), ("gcg", torch.int64, 2)]
    log = [json.loads(ln) for ln in (full / "log.jsonl").read_text().splitlines()[:5]]
    assert ["adv_prompt" in r for r in log[1:5]] == [False, True, False, True]  # real-token rounds have a text
    _crash_after(monkeypatch, 3, ov, tmp_path / "split")
    split = train("star", ov, output_dir=tmp_path / "split", resume=True)
    a, b = _weights(full), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    from robust_encoders.training.config import ConfigError

    with pytest.raises(ConfigError, match="one mode per chain"):
        resolve_config("star", TINY + ["attack.chains=3", "attack.chain_modes=[continuous,gcg]"])
    with pytest.raises(ConfigError, match="not a chain mode"):
        resolve_config("star", TINY + ["attack.chains=2", "attack.chain_modes=[continuous,derived]"])
    with pytest.raises(ConfigError, match="one per chain"):
        resolve_config("star", TINY + ["attack.chains=2", "attack.chain_steps=[8]"])
    with pytest.raises(ConfigError, match="attack.mode=gcg would have no effect"):  # not silently ignored
        resolve_config("star", TINY + ["attack.mode=gcg", "attack.chains=2", "attack.chain_modes=[continuous,gcg]"])
    # bound reaches the continuous chain only; the gcg chain takes its own step count
    cfg = resolve_config("star", TINY + ["attack.bound=vocab", *ov[-7:]]).attack
    assert [(c.mode, c.bound, c.steps, c.k) for c in (cfg.to_prompt_attack_config(0, i) for i in (0, 1))] == [
        ("continuous", "vocab", 2, k), ("gcg", "none", 1, 2)]
    with pytest.raises(ConfigError, match="attack.chain_k gives 1 token count"):
        resolve_config("star", TINY + ["attack.chains=2", "attack.chain_k=[5]"])
    with pytest.raises(ConfigError, match="or null for attack.k"):
        resolve_config("star", TINY + ["attack.chains=2", "attack.chain_k=[null,0]"])


def test_attack_restart_rounds_start_afresh(tmp_path, monkeypatch):
    """attack.restart_every=3: every third round starts from random tokens (its state's round count is 1 again)."""
    rounds, original = [], Trainer.train_step

    def recording(self, step):
        out = original(self, step)
        rounds.append(None if self.attack_states[0] is None else self.attack_states[0].rounds)
        return out

    monkeypatch.setattr(Trainer, "train_step", recording)
    train("star", TINY + ["iterations=6", "attack.every=1", "attack.restart_every=3", "attack.restart_steps=3"],
          output_dir=tmp_path / "r")
    assert rounds == [None, 1, 2, 1, 2, 3]  # warm-up, round 0 (fresh), 1 (warm), 2 (restart), 3, 4 (warm)


def test_attack_resample_xt_sees_other_timesteps_and_resumes(tmp_path, monkeypatch):
    """attack.resample_xt: every attack step reads another step of the same prompts' trajectories; still resumable."""
    from robust_encoders.training.config import ConfigError
    from robust_encoders.training.sampling import TrajectoryPool

    seen, original = [], TrajectoryPool.resample

    def recording(self, batch, gen):
        out = original(self, batch, gen)
        seen.append((batch.prompt_index.tolist(), out.prompt_index.tolist(), out.source.tolist(), batch.source.tolist(),
                     out.timesteps.tolist()))
        return out

    monkeypatch.setattr(TrajectoryPool, "resample", recording)
    ov = TINY + ["iterations=4", "checkpoint.every=2", "attack.steps=3", "attack.resample_xt=true",
                 "unlearn.ddim_steps=8"]
    full = train("star", ov, output_dir=tmp_path / "full")
    assert len(seen) >= 3 * 3  # three attacked iterations, one draw per attack step (+ the final evaluation)
    assert all(a == b and s == t for a, b, s, t, _ in seen)  # same prompts, same trajectories
    assert len({tuple(ts) for *_, ts in seen}) > 1  # ... at other timesteps
    monkeypatch.setattr(TrajectoryPool, "resample", original)

    _crash_after(monkeypatch, 2, ov, tmp_path / "split")
    split = train("star", ov, output_dir=tmp_path / "split", resume=True)
    a, b = _weights(full), _weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fixed = _weights(train("star", [*ov[:-2], "unlearn.ddim_steps=8"], output_dir=tmp_path / "fixed"))
    assert any(not torch.equal(a[k], fixed[k]) for k in a)
    with pytest.raises(ConfigError, match="sampling.pool > 0"):
        resolve_config("star", ["attack.mode=continuous", "attack.resample_xt=true", "sampling.pool=0"])
    with pytest.raises(ConfigError, match="a gcg entry of attack.chain_modes"):  # the recipe's soft + GCG chains
        resolve_config("star", ["attack.resample_xt=true"])


def test_output_dir_guard(tmp_path):
    ov = TINY + ["iterations=1", "attack.enabled=false", "retain.space=encoder"]
    run = train("red", ov, output_dir=tmp_path / "r")
    with pytest.raises(RunDirError, match="already holds the same run, finished"):
        train("red", ov, output_dir=run)
    with pytest.raises(RunDirError, match="a different run .*concept 'red'.*concept.name"):
        train("stripes", ov, output_dir=run)
    with pytest.raises(RunDirError, match="Cannot resume.*retain.weight"):
        train("red", [*ov, "retain.weight=0.1"], output_dir=run, resume=True)
    before = (run / "robust_encoder.json").stat().st_mtime_ns
    train("stripes", ov, output_dir=run, overwrite=True)
    assert json.loads((run / "robust_encoder.json").read_text())["concept"] == "stripes"
    assert (run / "robust_encoder.json").stat().st_mtime_ns != before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="holds no training run"):
        train("red", ov, output_dir=tmp_path / "mine")
    with pytest.raises(RunDirError, match="not from a training run"):
        train("red", ov, output_dir=tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_lora_run_writes_a_reloadable_adapter(tmp_path):
    from peft import PeftModel

    from robust_encoders.core.text import encode_ids, tokenize
    from robust_encoders.tokenization import load_clip_tokenizer

    run = train("stripes", TINY + ["iterations=2", "trainable.part=lora", "trainable.lora.rank=2", "optim.lr=1e-2",
                                   "retain.space=encoder"], output_dir=tmp_path / "lora")
    folder = run / "text_encoder"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    info = json.loads((run / "robust_encoder.json").read_text())
    assert info["format"] == "lora" and cfg["base_model_name_or_path"] == info["base_model"]
    assert (folder / "adapter_model.safetensors").is_file()
    from robust_encoders import load_robust_encoder  # the loader reads the run folder directly

    base = load_robust_encoder(info["base_model"], torch_dtype=torch.float32)
    ids = tokenize(load_clip_tokenizer(), ["a square on a striped background"])
    before = encode_ids(base, ids).last_hidden_state
    adapted = PeftModel.from_pretrained(base, folder).merge_and_unload()
    after = encode_ids(adapted, ids).last_hidden_state
    assert not torch.allclose(before, after)
    loaded = load_robust_encoder(folder)
    torch.testing.assert_close(encode_ids(loaded, ids).last_hidden_state, after)


def test_discrete_attack_first_layer_run(tmp_path):
    run = train("red", TINY + ["iterations=2", "attack.mode=discrete", "attack.k=2", "attack.init=random",
                               "attack.lr=0.1", "trainable.part=first_k", "trainable.layers=1", "retain.space=encoder"],
                output_dir=tmp_path / "d")
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert isinstance(log[1]["adv_prompt"], str) and "attack_loss" in log[1]
    assert json.loads((run / "robust_encoder.json").read_text())["trainable_detail"]["layers"] == 1


def test_gcg_inner_attack_trains_on_real_tokens_and_warm_starts(tmp_path):
    from robust_encoders.core.text import tokenize
    from robust_encoders.tokenization import load_clip_tokenizer

    run = train("star", TINY + ["iterations=4", "attack.mode=gcg", "attack.k=3", "attack.steps=1",
                                "attack.candidates=4", "attack.topk=16", "attack.init=warm"], output_dir=tmp_path / "g")
    log = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    prompts = [r["adv_prompt"] for r in log[1:4]]
    assert all(isinstance(p, str) for p in prompts) and "attack_loss" in log[1]
    # warm start: each round continues from the last round's real tokens, and one GCG step swaps at most one of the
    # 3 slots (a fresh random start would change all three)
    slots = [tokenize(load_clip_tokenizer(), [p])[0, 1:4] for p in prompts]
    assert all(int((a != b).sum()) <= 1 for a, b in zip(slots, slots[1:], strict=False))
    with pytest.raises(ConfigError, match="attack.resample_xt=false with attack.mode=gcg"):
        resolve_config("star", TINY + ["attack.mode=gcg", "attack.resample_xt=true"])
    # a key added later stays out of the fingerprint at its default, so older run folders still resume
    base = resolve_config("star", TINY)
    assert resolve_config("star", TINY + ["attack.candidates=16"]).fingerprint() == base.fingerprint()
    assert resolve_config("star", TINY + ["attack.candidates=8"]).fingerprint() != base.fingerprint()
    assert resolve_config("star", TINY + ["attack.eval_batch=32"]).fingerprint() == base.fingerprint()
    assert resolve_config("star", TINY + ["attack.eval_batch=4"]).fingerprint() != base.fingerprint()
    with pytest.raises(ConfigError, match="eval_batch must be an integer >= 1"):
        resolve_config("star", TINY + ["attack.mode=gcg", "attack.eval_batch=0"])


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_unavailable_base_model_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(BaseModelUnavailableError, match="not available offline.*huggingface-cli download"):
        train("vangogh", ["log.progress=false"], output_dir=tmp_path / "v")
    assert time.perf_counter() - t < 20


def test_two_processes_keep_identical_replicas(tmp_path):
    """`accelerate launch` with 2 CPU processes: gradients are averaged, replicas stay bit-identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, *accelerate_launch(2), "-m", "robust_encoders", "train", "--concept", "star",
           "-o", str(tmp_path / "mp"), *TINY, "iterations=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-12000:]
    log = [json.loads(ln) for ln in (tmp_path / "mp" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["world_size"] == 2 and log[-1]["replicas_identical"] is True
    assert "loss_mean_over_processes" in log[0]
    ck = sorted((tmp_path / "mp" / "checkpoints").iterdir())[-1]
    assert (ck / "rng_rank0.safetensors").is_file() and (ck / "rng_rank1.safetensors").is_file()


def test_micro_batches_give_the_same_update(tmp_path, monkeypatch):
    """Back-propagating sample by sample (engine.micro_batch=1, the SD recipes' memory saver) = one fused pass; so
    does recomputing the UNet's activations in the backward pass (engine.gradient_checkpointing=true)."""
    import torch.utils.checkpoint

    real, recomputed = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(*args, **kwargs):  # a spy: the real function runs
        recomputed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    ov = TINY + ["iterations=2", "retain.batch_size=3", "optim.optimizer=sgd", "optim.lr=1.0"]  # SGD: Δw ∝ gradient
    fused = _weights(train("star", ov, output_dir=tmp_path / "a"))
    micro = _weights(train("star", [*ov, "engine.micro_batch=1"], output_dir=tmp_path / "b"))
    split = _weights(train("star", [*ov, "engine.fused_unet_batch=false"], output_dir=tmp_path / "c"))
    assert not recomputed
    ckpt = _weights(train("star", [*ov, "engine.gradient_checkpointing=true"], output_dir=tmp_path / "d"))
    for k in fused:
        torch.testing.assert_close(micro[k], fused[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(split[k], fused[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ckpt[k], fused[k], atol=1e-5, rtol=1e-4)
    assert recomputed, "engine.gradient_checkpointing=true must route the UNet blocks through torch's checkpoint"


def test_attack_loss_is_read_off_the_update_pass(tmp_path):
    """The trainer skips the attack's own scoring pass (score_final=False); the logged attack loss, taken from the
    update's forward pass of the adversarial prompt, is the loss the attack's final prompt has against its teacher."""
    from robust_encoders.core.diffusion import predict_eps
    from robust_encoders.training.trainer import _mse_per_sample

    tr = Trainer(resolve_config("star", [*TINY, "iterations=2", "attack.warmup=0"]), tmp_path / "run")
    tr._setup()
    seen = {}
    attack = tr._attack

    def observed(step, prompts, xb):
        res, fresh = attack(step, prompts, xb)
        lat, ts, teacher = tr._on_device(xb)
        with torch.no_grad():
            eps = predict_eps(tr.unet, lat, ts, tr._adv_cond(res, list(range(len(prompts)))))
        seen[step] = (res.sample_losses, float(_mse_per_sample(eps, teacher).mean()))
        return res, fresh

    tr._attack = observed
    record = tr.train_step(0)
    own_score, recomputed = seen[0]
    assert own_score is None  # no extra UNet pass inside the attack
    assert record["attack_loss"] == pytest.approx(recomputed, rel=1e-5)


def test_frozen_encoder_is_released_once_its_outputs_are_cached(tmp_path):
    """engine.release_original_encoder (default): the frozen encoder copy is freed after caching its outputs for
    every prompt the run uses, with the same trained weights as keeping it; options that encode new text with it keep
    it; asking the released encoder for a prompt it never saw is an error that says what to switch."""
    ov = TINY + ["iterations=3"]
    released = Trainer(resolve_config("star", ov), tmp_path / "x")
    released._setup()
    assert released.te_orig is None
    assert {"", *released.forget_prompts, *released.retain_prompts} <= set(released._orig_cache)
    with pytest.raises(RuntimeError, match="release_original_encoder=false"):
        released._orig_hidden(["a prompt the run never uses"])
    for option in ("anchor.kind=adversarial", "engine.release_original_encoder=false", "engine.cache_original=false"):
        kept = Trainer(resolve_config("star", [*ov, option]), tmp_path / option)
        kept._setup()
        assert kept.te_orig is not None, option
    a = _weights(train("star", ov, output_dir=tmp_path / "a"))
    b = _weights(train("star", [*ov, "engine.release_original_encoder=false"], output_dir=tmp_path / "b"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_released_encoder_is_never_copied(tmp_path, monkeypatch):
    """With engine.release_original_encoder the trainer makes no frozen copy at all: set-up reads the frozen outputs
    from the not yet trained encoder (LoRA starts as the identity), exactly the outputs a frozen copy gives, and the
    model is back in train mode for the run."""
    copies = []
    real = Trainer._frozen_copy
    monkeypatch.setattr(Trainer, "_frozen_copy", lambda self, enc: copies.append(enc) or real(self, enc))
    ov = TINY + ["iterations=3"]
    for extra in ([], ["trainable.part=lora", "trainable.lora.dropout=0.5"]):
        shared = Trainer(resolve_config("star", [*ov, *extra]), tmp_path / f"s{len(extra)}")
        shared._setup()
        assert copies == [] and shared.te_orig is None and shared.model.training
        kept = Trainer(resolve_config("star", [*ov, *extra, "engine.release_original_encoder=false"]),
                       tmp_path / f"k{len(extra)}")
        kept._setup()
        assert len(copies) == 1 and kept.te_orig is not None
        # the frozen copy owns only what the run trains: the token embedding table is one tensor for both
        assert kept.te_orig.get_input_embeddings().weight is kept.te.get_input_embeddings().weight
        fc1 = dict(kept.te_orig.named_parameters())["encoder.layers.0.mlp.fc1.weight"]
        assert any(fc1 is q for q in kept.te.parameters()) == bool(extra)  # LoRA trains no base weight
        copies.clear()
        prompts = ["", *shared.forget_prompts, *shared.retain_prompts[:5]]
        assert torch.equal(shared._orig_hidden(prompts), kept._orig_hidden(prompts)), extra


def test_trainer_lets_go_of_the_parts_of_a_given_pipeline_it_does_not_use(tmp_path):
    """A trainer given a pipeline keeps what training needs (its UNet and text encoder) but not the pipeline: once the
    caller drops it, the VAE, which training never runs, is freed, as it is never loaded when training by name."""
    import gc
    import weakref

    from robust_encoders.miniature import load_pipeline

    pipe = load_pipeline()
    vae, unet = weakref.ref(pipe.vae), pipe.unet
    trainer = Trainer(resolve_config("star", TINY + ["iterations=2"]), tmp_path / "run", pipeline=pipe)
    del pipe
    gc.collect()
    assert vae() is not None  # held until set-up has taken what it needs
    trainer.run()
    gc.collect()
    assert vae() is None
    assert trainer.unet is unet  # the pipeline's own UNet, frozen in place


@pytest.mark.parametrize("part", ["all", "lora"])
def test_given_pipeline_is_shared_not_copied(tmp_path, part):
    """Trained from a given pipeline, the run copies only what it trains: the pipeline's own encoder is the frozen
    original, and the trained encoder's frozen tensors (the token embedding table; with LoRA every base weight) are
    the pipeline's own. The pipeline's weights stay bit for bit, and the trained weights are exactly those of full
    copies (engine.share_frozen_weights=false)."""
    from robust_encoders.miniature import load_pipeline

    ov = TINY + ["iterations=3", f"trainable.part={part}"]
    pipe = load_pipeline()
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    shared = Trainer(resolve_config("star", ov), tmp_path / "a", pipeline=pipe)
    shared.run()
    own = dict(pipe.text_encoder.named_parameters())
    trained = dict(shared.te.named_parameters())
    assert shared.te_orig is pipe.text_encoder and shared.frozen_source == "pipeline"
    assert trained["embeddings.token_embedding.weight"] is own["embeddings.token_embedding.weight"]
    fc1 = "encoder.layers.0.mlp.fc1"
    if part == "all":
        assert trained[f"{fc1}.weight"] is not own[f"{fc1}.weight"]
    else:
        wrapped = [n for n in trained if n.endswith(".base_layer.weight")]
        assert wrapped and all(trained[n] is own[n.replace(".base_layer", "")] for n in wrapped)
    assert all(torch.equal(before[k], v) for k, v in pipe.text_encoder.state_dict().items())
    other = load_pipeline()
    full = Trainer(resolve_config("star", [*ov, "engine.share_frozen_weights=false"]), tmp_path / "b", pipeline=other)
    full.run()
    assert full.te_orig is other.text_encoder  # still no second copy: the reference layout holds two encoders
    assert dict(full.te.named_parameters())["embeddings.token_embedding.weight"] is not (
        other.text_encoder.get_input_embeddings().weight)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bf16_frozen_parts_train_fp32_weights_close_to_fp32_run(tmp_path):
    """model.dtype=bfloat16 + model.mixed_precision=bf16 (what model.dtype=auto picks on a GPU) also runs on a CPU:
    the frozen UNet is bf16 and runs under bf16 autocast, the trained encoder keeps fp32 weights, and its update points
    the same way as the fp32 run's."""
    ov = TINY + ["iterations=2", "optim.optimizer=sgd", "optim.lr=1.0"]  # SGD: Δw ∝ gradient
    bf16_ov = [*ov, "model.dtype=bfloat16", "model.mixed_precision=bf16"]
    half = Trainer(resolve_config("star", bf16_ov), tmp_path / "x")
    half._setup()
    assert half.frozen_dtype == torch.bfloat16 and half.autocast_dtype == torch.bfloat16
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in half.te.parameters())
    from robust_encoders import load_robust_encoder

    w0 = load_robust_encoder("miniature", torch_dtype=torch.float32).state_dict()
    fp32 = _weights(train("star", ov, output_dir=tmp_path / "a"))
    bf16 = _weights(train("star", bf16_ov, output_dir=tmp_path / "b"))
    assert all(v.dtype == torch.float32 for v in bf16.values())
    k = "encoder.layers.0.mlp.fc1.weight"
    d32, d16 = (fp32[k] - w0[k]).flatten(), (bf16[k] - w0[k]).flatten()
    assert d16.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.9


def test_ema_export_is_the_moving_average_and_resumes(tmp_path, monkeypatch):
    """optim.ema_decay: the run exports the moving average of the live weights (diffusers' EMAModel warm-up
    (1+k)/(10+k), capped at the decay); checkpoints keep both, so a killed run resumes to the same export."""
    from robust_encoders.training.config import ConfigError

    ov = TINY + ["iterations=4", "checkpoint.every=2", "optim.ema_decay=0.5", "optim.ema_start=1"]
    live, original = [], Trainer.train_step

    def recording(self, step):
        out = original(self, step)
        live.append({n: p.detach().clone() for n, p in zip(self.param_names, self.params, strict=True)})
        return out

    monkeypatch.setattr(Trainer, "train_step", recording)
    full = train("star", ov, output_dir=tmp_path / "full")
    monkeypatch.setattr(Trainer, "train_step", original)
    assert len(live) == 4
    avg = dict(live[0])
    for n_step, w in enumerate(live[1:], start=2):  # EMAModel.step number n_step; ema_start=1 delays the warm-up
        k = n_step - 1 - 1
        d = 0.0 if k <= 0 else min(0.5, (1 + k) / (10 + k))
        avg = {n: d * avg[n] + (1 - d) * w[n] for n in avg}
    exported = _weights(full)
    name = "encoder.layers.0.mlp.fc1.weight"
    assert torch.allclose(exported[name], avg[name], atol=1e-6)
    assert not torch.allclose(exported[name], live[-1][name], atol=1e-6)  # not the last iterate
    ck = load_file(str(full / "checkpoints" / "step_0000004" / "state.safetensors"))
    assert torch.equal(ck[f"model.{name}"], live[-1][name]) and torch.equal(ck[f"ema.{name}"], exported[name])
    assert json.loads((full / "robust_encoder.json").read_text())["weights"] == "ema (decay 0.5)"

    _crash_after(monkeypatch, 2, ov, tmp_path / "split")
    split = train("star", ov, output_dir=tmp_path / "split", resume=True)
    b = _weights(split)
    assert all(torch.equal(exported[k], b[k]) for k in exported)
    with pytest.raises(ConfigError, match="ema_decay"):
        resolve_config("star", ["optim.ema_decay=1.5"])


def test_cosine_schedule_in_the_log(tmp_path):
    """optim.schedule=cosine: linear warm-up, then a half cosine from lr to 0 over the remaining iterations."""
    import math

    run = train("star", TINY + ["iterations=5", "optim.lr_warmup=1", "optim.schedule=cosine", "optim.lr=1e-3"],
                output_dir=tmp_path / "run")
    lrs = [json.loads(ln)["lr"] for ln in (run / "log.jsonl").read_text().splitlines()[:5]]
    expected = [1e-3] + [1e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 4)) for s in range(1, 5)]
    assert lrs == pytest.approx(expected) and lrs[-1] < lrs[1] / 5
    flat = train("star", TINY + ["iterations=2"], output_dir=tmp_path / "flat")
    assert [json.loads(ln)["lr"] for ln in (flat / "log.jsonl").read_text().splitlines()[:2]] == [1e-3, 1e-3]


def test_per_stream_seeds_split_the_run_seed_completely(tmp_path):
    """seeds.<stream> replaces the run's seed in that stream alone: seed 2 with every stream set to 0 trains seed 0's
    weights (no stream still reads the run's seed), and one stream set to 0 takes only that stream from seed 0."""
    ov = [*TINY, "iterations=3", "attack.warmup=1"]
    streams = ["seeds.forget_pool=0", "seeds.retain_pool=0", "seeds.retain_prompts=0", "seeds.attack=0", "seeds.step=0", "seeds.init=0"]
    s0 = _weights(train("star", [*ov, "seed=0"], output_dir=tmp_path / "s0"))
    s2 = _weights(train("star", [*ov, "seed=2"], output_dir=tmp_path / "s2"))
    mixed = _weights(train("star", [*ov, "seed=2", *streams], output_dir=tmp_path / "mixed"))
    assert all(torch.equal(s0[k], mixed[k]) for k in s0)
    assert not all(torch.equal(s0[k], s2[k]) for k in s0)

    def setup(*extra):
        tr = Trainer(resolve_config("star", [*ov, *extra]), tmp_path / f"t{len(list(tmp_path.iterdir()))}")
        tr._setup()
        return tr

    a, b, pool_only = setup("seed=0"), setup("seed=2"), setup("seed=2", "seeds.forget_pool=0")
    first = {name: t.forget_pool._chunk(0)[0].latents[0] for name, t in
             (("a", a), ("b", b), ("pool_only", pool_only))}
    assert torch.equal(first["pool_only"], first["a"]) and not torch.equal(first["b"], first["a"])
    retain_first = [t.retain_pool._chunk(0)[0].latents[0] for t in (a, b, pool_only)]
    assert torch.equal(retain_first[2], retain_first[1]) and not torch.equal(retain_first[1], retain_first[0])
    assert pool_only.retain_prompts == b.retain_prompts != a.retain_prompts
    assert setup("seed=2", "seeds.retain_prompts=0").retain_prompts == a.retain_prompts
    assert b.cfg.fingerprint() != pool_only.cfg.fingerprint()  # a different run: no resuming one from the other
