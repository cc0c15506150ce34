"""convert_legacy_bin: legacy pickle encoders -> safetensors, never executing a pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from _tiny import tiny_text_encoder
from hub_runs import encoder_outputs
from robust_encoders import load_robust_encoder
from robust_encoders.hub import convert_legacy_bin, infer_text_config
from robust_encoders.loading import CheckpointMismatchError, UnsafeCheckpointError


class Payload:
    """Unpickling this runs code: it writes ``marker`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def legacy_checkpoint(folder: Path, *, prefix: str = "text_model.", with_config: bool = True):
    """A transformers-4 style CLIPTextModel checkpoint: ``text_model.*`` keys, a ``position_ids`` buffer."""
    model = tiny_text_encoder(seed=3)
    state = {prefix + k: v.clone() for k, v in model.state_dict().items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "pytorch_model.bin")
    if with_config:
        config = model.config.to_dict()
        config["architectures"] = ["CLIPTextModel"]
        (folder / "config.json").write_text(json.dumps(config))
    return model


def test_convert_transformers4_bin_round_trip(tmp_path):
    model = legacy_checkpoint(tmp_path / "legacy")
    out = convert_legacy_bin(tmp_path / "legacy", tmp_path / "converted")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_robust_encoder(out)
    assert torch.equal(encoder_outputs(loaded), encoder_outputs(model))
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_legacy_bin(tmp_path / "legacy", out)


def test_convert_wrapped_keys_with_explicit_config(tmp_path):
    model = legacy_checkpoint(tmp_path / "legacy", prefix="module.text_model.", with_config=False)
    config = tmp_path / "config-elsewhere"
    model.save_pretrained(config)  # only its config.json is read
    out = convert_legacy_bin(tmp_path / "legacy" / "pytorch_model.bin", tmp_path / "out", config=config)
    assert torch.equal(encoder_outputs(load_robust_encoder(out)), encoder_outputs(model))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker.txt"
    sanity = tmp_path / "sanity.txt"
    pickle.loads(pickle.dumps(Payload(sanity)))  # the payload is live: a plain unpickle does run it
    assert sanity.read_text() == "pwned"

    folder = tmp_path / "evil"
    folder.mkdir()
    legit = tiny_text_encoder().state_dict()
    torch.save({**{f"text_model.{k}": v for k, v in legit.items()}, "payload": Payload(marker)},
               folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
        convert_legacy_bin(folder, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_config_inferred_for_known_towers_only():
    def meta(*shape):
        return torch.empty(*shape, device="meta")

    clip_l = {"text_model.embeddings.token_embedding.weight": meta(49408, 768),
              "text_model.embeddings.position_embedding.weight": meta(77, 768),
              **{f"text_model.encoder.layers.{i}.mlp.fc1.weight": meta(3072, 768) for i in range(12)}}
    config = infer_text_config(clip_l)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["hidden_act"], config["architectures"]) == (768, 12, 12, "quick_gelu", ["CLIPTextModel"])

    odd = {"embeddings.token_embedding.weight": meta(100, 32), "embeddings.position_embedding.weight": meta(77, 32),
           "encoder.layers.0.mlp.fc1.weight": meta(37, 32)}
    with pytest.raises(CheckpointMismatchError, match="pass the config.json"):
        infer_text_config(odd)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    legacy_checkpoint(tmp_path / "legacy", with_config=False)
    wrong = tiny_text_encoder(48).config.to_dict()
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        convert_legacy_bin(tmp_path / "legacy", tmp_path / "out", config=wrong)
