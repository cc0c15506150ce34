"""load_robust_encoder / apply_robust_encoder on real files, real peft adapters and real diffusers pipelines.

Every accepted input form round-trips (save, load, identical outputs); swapping changes the prompt embeddings and
the pipeline still generates; every mismatch raises a teaching error and leaves the pipeline untouched; offline
failures are fast and clear; a malicious pickle is refused without running.
"""

from __future__ import annotations

import json
import pickle
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from _tiny import (
    SD1_HIDDEN,
    SD2_HIDDEN,
    SDXL_HIDDEN_1,
    SDXL_HIDDEN_2,
    SDXL_PROJECTION,
    encoder_outputs,
    generate,
    populate_hf_cache,
    prompt_embeds,
    save_legacy_bin_folder,
    tiny_text_encoder,
)
from robust_encoders import apply_robust_encoder, load_robust_encoder
from robust_encoders.loading import (
    CheckpointMismatchError,
    CompatibilityWarning,
    EncoderNotFoundError,
    IncompatibleEncoderError,
    UnsafeCheckpointError,
    download_robust_encoder,
    encoder_info,
)

PROMPT = "a photo of a church"


def assert_same_outputs(a, b, atol: float = 0.0):
    out_a, out_b = encoder_outputs(a, PROMPT), encoder_outputs(b, PROMPT)
    if atol == 0.0:
        assert torch.equal(out_a, out_b)
    else:
        torch.testing.assert_close(out_a, out_b, atol=atol, rtol=0)


@pytest.fixture
def encoder():
    return tiny_text_encoder(SD1_HIDDEN, seed=7)


@pytest.fixture
def saved(encoder, tmp_path) -> Path:
    folder = tmp_path / "robust-sd1"
    encoder.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------------------ round trips
def test_save_pretrained_folder_roundtrip(encoder, saved):
    assert (saved / "model.safetensors").is_file()
    loaded = load_robust_encoder(saved)
    assert type(loaded) is CLIPTextModel
    assert not loaded.training
    assert_same_outputs(encoder, loaded)
    assert encoder_info(loaded)["source"] == str(saved)


def test_str_path_and_subfolder(encoder, saved):
    assert_same_outputs(encoder, load_robust_encoder(str(saved)))
    assert_same_outputs(encoder, load_robust_encoder(saved.parent, subfolder=saved.name))


def test_with_projection_roundtrip(tmp_path):
    enc = tiny_text_encoder(SDXL_HIDDEN_2, seed=3, with_projection=True, projection_dim=SDXL_PROJECTION)
    enc.save_pretrained(tmp_path / "te2")
    loaded = load_robust_encoder(tmp_path / "te2")
    assert type(loaded) is CLIPTextModelWithProjection
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    with torch.no_grad():
        torch.testing.assert_close(enc(ids).text_embeds, loaded(ids).text_embeds, atol=0, rtol=0)
        torch.testing.assert_close(enc(ids).last_hidden_state, loaded(ids).last_hidden_state, atol=0, rtol=0)


def test_legacy_bin_folder_with_text_model_keys(encoder, tmp_path):
    folder = tmp_path / "nudity_unlearned"
    save_legacy_bin_folder(encoder, folder)
    keys = torch.load(folder / "pytorch_model.bin", weights_only=True).keys()
    assert all(k.startswith("text_model.") for k in keys) and "text_model.embeddings.position_ids" in keys
    loaded = load_robust_encoder(folder)
    assert type(loaded) is CLIPTextModel
    assert_same_outputs(encoder, loaded)


def test_legacy_bin_with_projection(tmp_path):
    enc = tiny_text_encoder(SDXL_HIDDEN_2, seed=4, with_projection=True, projection_dim=SDXL_PROJECTION)
    save_legacy_bin_folder(enc, tmp_path / "te2")
    assert_same_outputs(enc, load_robust_encoder(tmp_path / "te2"))


def test_single_safetensors_with_config_next_to_it(encoder, saved):
    assert_same_outputs(encoder, load_robust_encoder(saved / "model.safetensors"))


def test_single_safetensors_with_base_model_and_partial_weights(encoder, saved, tmp_path):
    """A bare file + base_model: the file may hold only the tensors that changed."""
    base = tiny_text_encoder(SD1_HIDDEN, seed=1)
    base.save_pretrained(tmp_path / "base")
    changed = {k: v for k, v in encoder.state_dict().items() if k.startswith("encoder.layers.0.")}
    file = tmp_path / "delta" / "layer0.safetensors"
    file.parent.mkdir()
    save_file({f"text_model.{k}": v.contiguous() for k, v in changed.items()}, str(file))  # legacy keys too
    loaded = load_robust_encoder(file, base_model=tmp_path / "base")
    expected = tiny_text_encoder(SD1_HIDDEN, seed=1)
    expected.load_state_dict(changed, strict=False)
    assert_same_outputs(expected, loaded)
    # the base encoder as an object works too and is not modified
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    assert_same_outputs(expected, load_robust_encoder(file, base_model=base))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_before.items())


def test_single_safetensors_with_config_in_metadata(encoder, tmp_path):
    file = tmp_path / "robust.safetensors"
    config = encoder.config.to_dict()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(file),
              metadata={"config": json.dumps(config)})
    assert_same_outputs(encoder, load_robust_encoder(file))


def test_bare_safetensors_without_config_teaches(encoder, tmp_path):
    file = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(file))
    with pytest.raises(CheckpointMismatchError, match="base_model="):
        load_robust_encoder(file)


def test_wrong_config_for_weights(encoder, saved):
    config = json.loads((saved / "config.json").read_text())
    config["hidden_size"] = 48
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_robust_encoder(saved)


def test_dtype_and_auto(encoder, saved, tmp_path):
    assert load_robust_encoder(saved, torch_dtype=torch.float16).dtype == torch.float16
    assert load_robust_encoder(saved, torch_dtype="bf16").dtype == torch.bfloat16
    assert load_robust_encoder(saved).dtype == torch.float32
    encoder.half().save_pretrained(tmp_path / "half")
    assert load_robust_encoder(tmp_path / "half", torch_dtype="auto").dtype == torch.float16
    with pytest.raises(ValueError, match="torch_dtype"):
        load_robust_encoder(saved, torch_dtype="float8")


# ------------------------------------------------------------------------------------------------ peft adapters
def _make_adapter(tmp_path: Path, *, base_dir: Path | None, seed: int = 11, target_modules=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model

    base = tiny_text_encoder(SD1_HIDDEN, seed=1)
    if base_dir is not None:
        base.save_pretrained(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), init_lora_weights=False)
    peft_model = get_peft_model(base, cfg).eval()
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base_dir) if base_dir is not None else None
    (out / "adapter_config.json").write_text(json.dumps(config))
    return peft_model, out


def test_peft_adapter_merged_roundtrip(tmp_path):
    peft_model, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    loaded = load_robust_encoder(adapter)
    assert type(loaded) is CLIPTextModel
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert_same_outputs(peft_model, loaded, atol=1e-5)
    # and the adapter really changed something
    assert not torch.allclose(encoder_outputs(loaded), encoder_outputs(tiny_text_encoder(SD1_HIDDEN, seed=1)))


def test_peft_adapter_unmerged(tmp_path):
    from peft import PeftModel

    peft_model, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    loaded = load_robust_encoder(adapter, merge_adapter=False)
    assert isinstance(loaded, PeftModel)
    assert_same_outputs(peft_model, loaded, atol=0)


def test_peft_adapter_explicit_base_model(tmp_path):
    peft_model, adapter = _make_adapter(tmp_path, base_dir=None)
    with pytest.raises(CheckpointMismatchError, match="base_model="):
        load_robust_encoder(adapter)
    tiny_text_encoder(SD1_HIDDEN, seed=1).save_pretrained(tmp_path / "elsewhere")
    assert_same_outputs(peft_model, load_robust_encoder(adapter, base_model=tmp_path / "elsewhere"), atol=1e-5)
    assert_same_outputs(peft_model, load_robust_encoder(adapter, base_model=tiny_text_encoder(SD1_HIDDEN, seed=1)),
                        atol=1e-5)


def _to_legacy_adapter(adapter: Path, *, regex_targets: bool) -> None:
    """Rewrite a saved adapter as transformers-4 era peft wrote it: text_model.* keys (and target regex)."""
    state = load_file(str(adapter / "adapter_model.safetensors"))
    legacy = {k.replace("base_model.model.", "base_model.model.text_model.", 1): v for k, v in state.items()}
    assert all(".text_model.encoder." in k for k in legacy)
    save_file(legacy, str(adapter / "adapter_model.safetensors"))
    if regex_targets:
        config = json.loads((adapter / "adapter_config.json").read_text())
        config["target_modules"] = r"text_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)"
        (adapter / "adapter_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("regex_targets", [False, True])
def test_legacy_peft_adapter_keys_are_mapped_not_silently_ignored(tmp_path, regex_targets):
    peft_model, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    _to_legacy_adapter(adapter, regex_targets=regex_targets)
    assert_same_outputs(peft_model, load_robust_encoder(adapter), atol=1e-5)


def test_adapter_matching_no_module_raises(tmp_path):
    _, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    state = load_file(str(adapter / "adapter_model.safetensors"))
    junk = {k.replace("self_attn", "cross_attn"): v for k, v in state.items()}
    save_file(junk, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="no-op"):
        load_robust_encoder(adapter)


def test_adapter_targeting_missing_modules_raises(tmp_path):
    _, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["to_q", "to_v"]  # UNet-style names: nothing like that in a CLIP text encoder
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match="match no module"):
        load_robust_encoder(adapter)


def test_partial_adapter_raises(tmp_path):
    _, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    state = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({k: v for k, v in state.items() if "v_proj" not in k}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="partly"):
        load_robust_encoder(adapter)


# ------------------------------------------------------------------------------------------------ Hub ids via cache
def _advunlearn_cache(hf_cache: Path, encoder, tmp_path: Path, name: str = "nudity") -> None:
    folder = tmp_path / "build" / f"{name}_unlearned"
    save_legacy_bin_folder(encoder, folder)
    populate_hf_cache(hf_cache, "OPTML-Group/AdvUnlearn", {
        f"{name}_unlearned/config.json": folder / "config.json",
        f"{name}_unlearned/pytorch_model.bin": folder / "pytorch_model.bin",
    })


def test_registry_name_resolves_through_the_hf_cache(encoder, tmp_path, hf_cache, monkeypatch):
    """"nudity" -> OPTML-Group/AdvUnlearn/nudity_unlearned, legacy .bin, loaded from a pre-populated cache."""
    _advunlearn_cache(hf_cache, encoder, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_robust_encoder("Nudity", cache_dir=hf_cache)
    assert_same_outputs(encoder, loaded)
    info = encoder_info(loaded)
    assert info["name"] == "nudity" and info["families"] == ("sd1",)
    assert info["base_models"] == ("CompVis/stable-diffusion-v1-4",)


@pytest.mark.parametrize("form", ["joined", "subfolder_kwarg"])
def test_hub_repo_id_forms(encoder, tmp_path, hf_cache, form):
    _advunlearn_cache(hf_cache, encoder, tmp_path, name="church")
    if form == "joined":
        loaded = load_robust_encoder("OPTML-Group/AdvUnlearn/church_unlearned", cache_dir=hf_cache,
                                     local_files_only=True)
    else:
        loaded = load_robust_encoder("OPTML-Group/AdvUnlearn", subfolder="church_unlearned", cache_dir=hf_cache,
                                     local_files_only=True)
    assert_same_outputs(encoder, loaded)


def test_hub_unreachable_falls_back_to_cache_fast(encoder, tmp_path, hf_cache, monkeypatch, closed_port):
    _advunlearn_cache(hf_cache, encoder, tmp_path, name="tench")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    loaded = load_robust_encoder("tench", cache_dir=hf_cache)
    assert time.monotonic() - start < 10
    assert_same_outputs(encoder, loaded)
    assert download_robust_encoder("tench", cache_dir=hf_cache).name == "tench_unlearned"


def test_hub_repo_id_with_subfolder_and_joined_subfolder_conflict():
    with pytest.raises(ValueError, match="already names subfolder"):
        load_robust_encoder("OPTML-Group/AdvUnlearn/church_unlearned", subfolder="x", local_files_only=True)


def _assert_teaching_offline_error(message: str, *, name: str | None, subfolder: str):
    assert "OPTML-Group/AdvUnlearn" in message
    assert subfolder in message
    if name:
        assert f"robust-encoders pull {name}" in message
    assert f'hf download OPTML-Group/AdvUnlearn --include "{subfolder}/*"' in message
    assert "huggingface-cli download" in message
    assert "load_robust_encoder('/path/to/" in message  # or a local path


def test_offline_mode_fails_fast_and_clearly(hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(EncoderNotFoundError) as info:
        load_robust_encoder("nudity", cache_dir=hf_cache)
    assert time.monotonic() - start < 5
    message = str(info.value)
    _assert_teaching_offline_error(message, name="nudity", subfolder="nudity_unlearned")
    assert "HF_HUB_OFFLINE=1" in message
    assert isinstance(info.value, OSError)


def test_unreachable_endpoint_fails_fast_and_clearly(hf_cache, monkeypatch, closed_port):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    with pytest.raises(EncoderNotFoundError) as info:
        load_robust_encoder("OPTML-Group/AdvUnlearn/vangogh_unlearned", cache_dir=hf_cache)
    assert time.monotonic() - start < 5
    _assert_teaching_offline_error(str(info.value), name=None, subfolder="vangogh_unlearned")
    assert f"127.0.0.1:{closed_port}" in str(info.value)


def test_silent_endpoint_times_out_fast(hf_cache, monkeypatch):
    """A server that accepts connections but never answers (a network black hole) must not hang the loader."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("ROBUST_ENCODERS_HUB_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(EncoderNotFoundError, match="did not answer within 1 s") as info:
            load_robust_encoder("parachute", cache_dir=hf_cache)
        assert time.monotonic() - start < 15
    _assert_teaching_offline_error(str(info.value), name="parachute", subfolder="parachute_unlearned")


def test_missing_local_path_and_unknown_name(hf_cache, monkeypatch):
    with pytest.raises(EncoderNotFoundError, match="No such file or folder"):
        load_robust_encoder("./no/such/folder")
    with pytest.raises(EncoderNotFoundError, match="No such file or folder"):
        load_robust_encoder(Path("no/such/folder"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotFoundError, match="no local file or folder 'runs/my-encoder' exists"):
        load_robust_encoder("runs/my-encoder", cache_dir=hf_cache)
    with pytest.raises(EncoderNotFoundError, match="Did you mean 'nudity'"):
        load_robust_encoder("nuditty")


def test_folder_that_is_not_an_encoder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(EncoderNotFoundError, match="not an encoder folder"):
        load_robust_encoder(tmp_path)


# ------------------------------------------------------------------------------------------------ pickle safety
class _Payload:
    """Unpickling this would create the marker file (``open(marker, "w")``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch_save", "plain_pickle"])
def test_malicious_bin_is_refused_and_never_executed(encoder, tmp_path, writer):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "evil"
    save_legacy_bin_folder(encoder, folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["text_model.payload"] = _Payload(marker)
    if writer == "torch_save":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        with open(folder / "pytorch_model.bin", "wb") as f:
            pickle.dump(state, f)
    for target in (folder, folder / "pytorch_model.bin"):
        with pytest.raises(UnsafeCheckpointError) as info:
            load_robust_encoder(target, base_model=folder if target.is_file() else None)
        assert "weights_only" in str(info.value) and "pytorch_model.bin" in str(info.value)
        assert not marker.exists()
    # the same refusal applies through apply_robust_encoder, and the pipe is left alone
    assert not marker.exists()


def test_malicious_adapter_bin_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    _, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    state = load_file(str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_model.safetensors").unlink()
    state["x"] = _Payload(marker)
    torch.save(state, adapter / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpointError):
        load_robust_encoder(adapter)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ apply: success
def test_apply_to_sd1_changes_embeddings_and_generates(sd1_pipe, saved):
    before = prompt_embeds(sd1_pipe)
    old = sd1_pipe.text_encoder
    pipe = apply_robust_encoder(sd1_pipe, saved)
    assert pipe is sd1_pipe and pipe.text_encoder is not old
    assert pipe.text_encoder.device.type == "cpu" and pipe.text_encoder.dtype == torch.float32
    after = prompt_embeds(pipe)
    assert after.shape == before.shape and not torch.allclose(before, after)
    images = generate(pipe, steps=1)
    assert images.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(images)).all())


def test_apply_model_object_to_sd2_shaped_pipe(sd2_pipe):
    before = prompt_embeds(sd2_pipe)
    robust = tiny_text_encoder(SD2_HIDDEN, seed=5)
    apply_robust_encoder(sd2_pipe, robust)
    assert sd2_pipe.text_encoder is robust
    assert not torch.allclose(before, prompt_embeds(sd2_pipe))


def test_apply_casts_to_pipe_dtype(sd1_pipe, saved):
    sd1_pipe.text_encoder.to(torch.float16)
    apply_robust_encoder(sd1_pipe, saved)
    assert sd1_pipe.text_encoder.dtype == torch.float16


def _sdxl_folder(tmp_path: Path, seed: int = 21) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    te1 = tiny_text_encoder(SDXL_HIDDEN_1, seed=seed)
    te2 = tiny_text_encoder(SDXL_HIDDEN_2, seed=seed + 1, with_projection=True, projection_dim=SDXL_PROJECTION)
    folder = tmp_path / "robust-sdxl"
    te1.save_pretrained(folder / "text_encoder")
    te2.save_pretrained(folder / "text_encoder_2")
    return folder, te1, te2


def test_apply_sdxl_folder_swaps_both(sdxl_pipe, tmp_path):
    folder, te1, te2 = _sdxl_folder(tmp_path)
    before = prompt_embeds(sdxl_pipe)
    apply_robust_encoder(sdxl_pipe, folder)
    assert_same_outputs(te1, sdxl_pipe.text_encoder)
    assert_same_outputs(te2, sdxl_pipe.text_encoder_2)
    assert type(sdxl_pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert not torch.allclose(before, prompt_embeds(sdxl_pipe))
    assert generate(sdxl_pipe, steps=1).shape == (1, 32, 32, 3)


def test_apply_sdxl_dict_of_models_and_paths(sdxl_pipe, tmp_path):
    folder, te1, te2 = _sdxl_folder(tmp_path)
    apply_robust_encoder(sdxl_pipe, {"text_encoder": folder / "text_encoder", "text_encoder_2": te2})
    assert_same_outputs(te1, sdxl_pipe.text_encoder)
    assert sdxl_pipe.text_encoder_2 is te2


def test_sdxl_folder_needs_a_choice_in_load(tmp_path):
    folder, _, te2 = _sdxl_folder(tmp_path)
    with pytest.raises(ValueError, match="subfolder='text_encoder_2'"):
        load_robust_encoder(folder)
    assert_same_outputs(te2, load_robust_encoder(folder, subfolder="text_encoder_2"))


def test_pipeline_folder_with_one_encoder(sd1_pipe, tmp_path):
    sd1_pipe.save_pretrained(tmp_path / "pipe")
    loaded = load_robust_encoder(tmp_path / "pipe")
    assert_same_outputs(sd1_pipe.text_encoder, loaded)


def test_apply_unmerged_peft_adapter_generates(sd1_pipe, tmp_path):
    peft_model, adapter = _make_adapter(tmp_path, base_dir=tmp_path / "base")
    apply_robust_encoder(sd1_pipe, adapter, merge_adapter=False)
    assert_same_outputs(peft_model, sd1_pipe.text_encoder, atol=1e-6)
    assert generate(sd1_pipe, steps=1).shape == (1, 32, 32, 3)


def test_apply_registry_name_with_packaged_folder(sd1_pipe, tmp_path, registry_sandbox, encoder):
    """An entry can point at files inside the package (local_path) instead of a Hub repo."""
    encoder.save_pretrained(tmp_path / "packaged")
    registry_sandbox.register_pretrained({
        "name": "tiny-church", "local_path": str(tmp_path / "packaged"), "concept": "church",
        "concept_kind": "object", "method": "test", "license": "apache-2.0", "file_format": "safetensors",
        "base_models": ["CompVis/stable-diffusion-v1-4"], "families": ["sd1"],
    })
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompatibilityWarning)  # tiny pipe: no base id, so no family warning
        apply_robust_encoder(sd1_pipe, "Tiny Church")
    assert_same_outputs(encoder, sd1_pipe.text_encoder)
    assert encoder_info(sd1_pipe.text_encoder)["name"] == "tiny-church"


def test_warns_when_base_differs_but_family_fits(sd1_pipe, tmp_path, registry_sandbox, encoder):
    encoder.save_pretrained(tmp_path / "packaged")
    registry_sandbox.register_pretrained({
        "name": "tiny-church", "local_path": str(tmp_path / "packaged"), "concept": "church",
        "concept_kind": "object", "method": "test", "license": "apache-2.0", "file_format": "safetensors",
        "base_models": ["CompVis/stable-diffusion-v1-4"], "families": ["sd1"],
    })
    sd1_pipe.register_to_config(_name_or_path="runwayml/stable-diffusion-v1-5")
    with pytest.warns(CompatibilityWarning, match="CompVis/stable-diffusion-v1-4.*runwayml/stable-diffusion-v1-5"):
        apply_robust_encoder(sd1_pipe, "tiny-church")
    assert_same_outputs(encoder, sd1_pipe.text_encoder)


# ------------------------------------------------------------------------------------------------ apply: mismatches
def _snapshot(pipe):
    return {slot: getattr(pipe, slot, None) for slot in ("text_encoder", "text_encoder_2")}, prompt_embeds(pipe)


def _assert_untouched(pipe, snap):
    modules, embeds = snap
    for slot, module in modules.items():
        assert getattr(pipe, slot, None) is module, f"{slot} was replaced despite the error"
    assert torch.equal(prompt_embeds(pipe), embeds)
    assert pipe.config.text_encoder[1] == type(modules["text_encoder"]).__name__


def test_sd1_encoder_into_sd2_pipe(sd2_pipe, saved):
    snap = _snapshot(sd2_pipe)
    with pytest.raises(IncompatibleEncoderError) as info:
        apply_robust_encoder(sd2_pipe, saved)
    message = str(info.value)
    assert "hidden size 32" in message and "cross_attention_dim 48" in message
    assert "hidden size 48 would fit" in message
    assert isinstance(info.value, ValueError)
    _assert_untouched(sd2_pipe, snap)


def test_one_encoder_into_sdxl(sdxl_pipe, saved):
    snap = _snapshot(sdxl_pipe)
    with pytest.raises(IncompatibleEncoderError) as info:
        apply_robust_encoder(sdxl_pipe, saved)
    message = str(info.value)
    assert "needs 2 text encoders" in message and "text_encoder_2" in message
    assert "'text_encoder': ..., 'text_encoder_2': ..." in message
    assert "cross_attention_dim 32" in message  # what this SD1-style encoder would fit
    _assert_untouched(sdxl_pipe, snap)


def test_plain_clip_as_sdxl_second_encoder(sdxl_pipe):
    snap = _snapshot(sdxl_pipe)
    with pytest.raises(IncompatibleEncoderError, match="must be a CLIPTextModelWithProjection"):
        apply_robust_encoder(sdxl_pipe, {"text_encoder_2": tiny_text_encoder(SDXL_HIDDEN_2)})
    _assert_untouched(sdxl_pipe, snap)


def test_sdxl_projection_mismatch(sdxl_pipe):
    snap = _snapshot(sdxl_pipe)
    wrong = tiny_text_encoder(SDXL_HIDDEN_2, with_projection=True, projection_dim=24)
    with pytest.raises(IncompatibleEncoderError) as info:
        apply_robust_encoder(sdxl_pipe, {"text_encoder_2": wrong})
    assert "projection_dim 24" in str(info.value) and f"projection_dim {SDXL_PROJECTION} fits" in str(info.value)
    _assert_untouched(sdxl_pipe, snap)


def test_sdxl_hidden_sum_mismatch(sdxl_pipe):
    snap = _snapshot(sdxl_pipe)
    wide = tiny_text_encoder(64, with_projection=True, projection_dim=SDXL_PROJECTION)
    with pytest.raises(IncompatibleEncoderError) as info:
        apply_robust_encoder(sdxl_pipe, {"text_encoder_2": wide})
    message = str(info.value)
    assert "= 96" in message and "cross_attention_dim is 80" in message
    assert f"text_encoder_2 would need hidden size {SDXL_HIDDEN_2}" in message
    _assert_untouched(sdxl_pipe, snap)


def test_vocab_too_small(sd1_pipe):
    snap = _snapshot(sd1_pipe)
    with pytest.raises(IncompatibleEncoderError, match="49408 tokens but the encoder only embeds 1000"):
        apply_robust_encoder(sd1_pipe, tiny_text_encoder(SD1_HIDDEN, vocab_size=1000))
    _assert_untouched(sd1_pipe, snap)


def test_too_few_positions(sd1_pipe):
    snap = _snapshot(sd1_pipe)
    with pytest.raises(IncompatibleEncoderError, match="sequences of 77 tokens but the encoder has only 16"):
        apply_robust_encoder(sd1_pipe, tiny_text_encoder(SD1_HIDDEN, max_position_embeddings=16))
    _assert_untouched(sd1_pipe, snap)


def test_projection_model_into_plain_slot(sd1_pipe):
    snap = _snapshot(sd1_pipe)
    with pytest.raises(IncompatibleEncoderError, match="must be a CLIPTextModel"):
        apply_robust_encoder(sd1_pipe, tiny_text_encoder(SD1_HIDDEN, with_projection=True))
    _assert_untouched(sd1_pipe, snap)


def test_second_encoder_for_one_encoder_pipe(sd1_pipe, tmp_path):
    snap = _snapshot(sd1_pipe)
    folder, _, _ = _sdxl_folder(tmp_path)
    with pytest.raises(IncompatibleEncoderError, match="has no text_encoder_2"):
        apply_robust_encoder(sd1_pipe, folder)
    _assert_untouched(sd1_pipe, snap)


def test_sd1_registry_entry_into_sdxl_rejected_before_download(sdxl_pipe, hf_cache, monkeypatch, closed_port):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    snap = _snapshot(sdxl_pipe)
    with pytest.raises(IncompatibleEncoderError) as info:
        apply_robust_encoder(sdxl_pipe, "nudity", cache_dir=hf_cache)
    message = str(info.value)
    assert "SD 1.x" in message and "SDXL" in message and "No registry entry fits SDXL" in message
    _assert_untouched(sdxl_pipe, snap)


def test_load_errors_leave_pipe_untouched(sd1_pipe, hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = _snapshot(sd1_pipe)
    with pytest.raises(EncoderNotFoundError):
        apply_robust_encoder(sd1_pipe, "church", cache_dir=hf_cache)
    with pytest.raises(TypeError, match="unexpected keyword"):
        apply_robust_encoder(sd1_pipe, "church", cach_dir=hf_cache)
    _assert_untouched(sd1_pipe, snap)


def test_registry_entry_class_is_enforced(tmp_path, registry_sandbox, encoder):
    encoder.save_pretrained(tmp_path / "packaged")
    registry_sandbox.register_pretrained({
        "name": "liar", "local_path": str(tmp_path / "packaged"), "concept": "church", "concept_kind": "object",
        "method": "test", "license": "apache-2.0", "file_format": "safetensors",
        "base_models": ["stabilityai/stable-diffusion-xl-base-1.0"], "families": ["sdxl"],
        "encoder_class": "CLIPTextModelWithProjection",
    })
    with pytest.raises(CheckpointMismatchError, match="promises a CLIPTextModelWithProjection"):
        load_robust_encoder("liar")


def test_check_encoder_compatibility_lists_nothing_when_it_fits(sd1_pipe, sdxl_pipe):
    from robust_encoders import check_encoder_compatibility

    assert check_encoder_compatibility(sd1_pipe, {"text_encoder": tiny_text_encoder(SD1_HIDDEN)}) == []
    assert check_encoder_compatibility(sdxl_pipe, {"text_encoder_2": sdxl_pipe.text_encoder_2}) == []
    problems = check_encoder_compatibility(sd1_pipe, {"text_encoder": tiny_text_encoder(SD2_HIDDEN)})
    assert len(problems) == 1 and "cross_attention_dim 32" in problems[0]


def test_online_download_from_a_local_hub_then_offline(encoder, tmp_path, hf_cache, monkeypatch):
    """The real online path against a Hub-compatible server on loopback: only the needed files are fetched
    (allow_patterns; .safetensors preferred, legacy .bin as fallback), and the cache they land in then serves
    the same name with HF_HUB_OFFLINE=1."""
    hub_server = pytest.importorskip("hub_server", reason="tests/hub_server.py (local Hub) not present")
    from huggingface_hub import HfApi

    upload = tmp_path / "upload"
    save_legacy_bin_folder(encoder, upload / "nudity_unlearned")
    other = tiny_text_encoder(SD1_HIDDEN, seed=99)
    other.save_pretrained(upload / "church_unlearned")
    (upload / "church_unlearned" / "notes.bin").write_bytes(b"not needed")
    with hub_server.HubServer(tokens={"hf_test": ("optml", {"OPTML-Group"})}) as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("OPTML-Group/AdvUnlearn")
        api.upload_folder(repo_id="OPTML-Group/AdvUnlearn", folder_path=str(upload))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert_same_outputs(encoder, load_robust_encoder("nudity", cache_dir=hf_cache))
        assert_same_outputs(other, load_robust_encoder("OPTML-Group/AdvUnlearn/church_unlearned",
                                                       cache_dir=hf_cache))
        with pytest.raises(EncoderNotFoundError, match="has no encoder files.*subfolder"):
            load_robust_encoder("OPTML-Group/AdvUnlearn/no_such_unlearned", cache_dir=hf_cache)
        with pytest.raises(EncoderNotFoundError, match="not found on the Hub"):
            load_robust_encoder("OPTML-Group/NoSuchRepo", cache_dir=hf_cache)
        downloads = [p for m, p in hub.log if m == "GET" and "/resolve/" in p]
    assert any("nudity_unlearned/pytorch_model.bin" in p for p in downloads), downloads
    assert not any("notes.bin" in p for p in downloads), downloads  # safetensors found: no .bin fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone; the cache must be enough
    assert_same_outputs(encoder, load_robust_encoder("nudity", cache_dir=hf_cache))
    assert_same_outputs(other, load_robust_encoder("church", cache_dir=hf_cache))


def test_packaged_miniature_base_resolves_by_name():
    """Runs and adapters trained on the embedded world record the base as 'miniature', not a local path."""
    from robust_encoders.miniature import load_pipeline

    enc = load_robust_encoder("miniature")
    ref = load_pipeline().text_encoder
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2735, 49407]])
    with torch.no_grad():
        torch.testing.assert_close(enc(ids).last_hidden_state, ref.float()(ids).last_hidden_state)
