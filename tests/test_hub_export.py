"""Export: trainer RUN_DIR -> Hub-layout folder + model card; round trips through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from hub_runs import EVAL_RESULTS, digest_tree, encoder_outputs, make_base_pipeline, make_run
from robust_encoders import load_robust_encoder
from robust_encoders.hub import ExportError, ExportExistsError, export_run, template_path
from robust_encoders.hub.card import GENERATED_END, GENERATED_START

PROMPTS = ("a photo of a church", "a red star over a green field")
REPO_ROOT = Path(__file__).resolve().parents[1]


def outputs(encoder) -> torch.Tensor:
    return torch.stack([encoder_outputs(encoder, p) for p in PROMPTS])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("full") / "run", eval_results=EVAL_RESULTS)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    base = make_base_pipeline(root / "base")
    return make_run(root / "run", fmt="lora", base_model=str(base), base_dir=base, eval_results=EVAL_RESULTS)


# ------------------------------------------------------------------------------------------------ round trips
def test_full_export_round_trip(full_run, tmp_path):
    out = export_run(full_run, tmp_path / "church", repo_id="alice/church-robust")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                     "robust_encoder.json"]
    assert (out / "model.safetensors").read_bytes() == (full_run / "text_encoder" / "model.safetensors").read_bytes()
    exported = load_robust_encoder(out)
    original = load_robust_encoder(full_run / "text_encoder")
    assert type(exported).__name__ == "CLIPTextModel"
    assert torch.equal(outputs(exported), outputs(original))

    meta = json.loads((out / "robust_encoder.json").read_text())
    assert meta["format"] == "full" and meta["layout"] == {"text_encoder": "."}
    assert meta["evaluations"][0]["asr"] == EVAL_RESULTS["asr"]
    assert meta["resolved_recipe"]["attack"]["steps"] == 5
    assert meta["repo_id"] == "alice/church-robust"


def test_lora_export_round_trip(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import CLIPTextModel

    out = export_run(lora_run, tmp_path / "church-lora")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json",
                                                     "adapter_model.safetensors", "robust_encoder.json"]
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    base_dir = lora_run.parent / "base" / "text_encoder"
    assert adapter_cfg["base_model_name_or_path"] == str(base_dir)  # a local base stays as the trainer wrote it

    exported = load_robust_encoder(out)
    assert torch.equal(outputs(exported), outputs(load_robust_encoder(lora_run / "text_encoder")))
    reference = PeftModel.from_pretrained(CLIPTextModel.from_pretrained(base_dir), lora_run / "text_encoder").eval()
    assert torch.allclose(outputs(exported), outputs(reference), atol=1e-5)
    assert not torch.allclose(outputs(exported), outputs(CLIPTextModel.from_pretrained(base_dir)), atol=1e-3)


def test_lora_base_reference_becomes_portable(tmp_path):
    base = make_base_pipeline(tmp_path / "base")
    run = make_run(tmp_path / "run", fmt="lora", base_model="robust-org/tiny-sd", base_dir=base)
    out = export_run(run, tmp_path / "out", repo_id="alice/church-lora")
    # the training machine's path means nothing elsewhere: the card's base pipeline + encoder folder replaces it
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "robust-org/tiny-sd/text_encoder"
    assert json.loads((out / "robust_encoder.json").read_text())["adapter_base"] == {
        "text_encoder": "robust-org/tiny-sd/text_encoder"}
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == ["robust-org/tiny-sd"] and card.data.library_name == "peft"
    assert 'CLIPTextModel.from_pretrained("robust-org/tiny-sd", subfolder="text_encoder")' in card.text
    loaded = load_robust_encoder(out, base_model=base / "text_encoder")
    assert torch.equal(outputs(loaded), outputs(load_robust_encoder(run / "text_encoder")))


def test_sdxl_pair_export(tmp_path):
    run = make_run(tmp_path / "run", slots=("text_encoder", "text_encoder_2"),
                   base_model="stabilityai/stable-diffusion-xl-base-1.0")
    out = export_run(run, tmp_path / "out", repo_id="alice/church-xl")
    assert (out / "text_encoder" / "model.safetensors").is_file()
    assert (out / "text_encoder_2" / "model.safetensors").is_file()
    for slot, cls in (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")):
        loaded = load_robust_encoder(out, subfolder=slot)
        assert type(loaded).__name__ == cls
        assert torch.equal(outputs(loaded), outputs(load_robust_encoder(run / slot)))
    with pytest.raises(ValueError, match="text_encoder_2"):
        load_robust_encoder(out)  # two encoders: the loader asks which one
    text = (out / "README.md").read_text()
    assert 'pipe.text_encoder_2 = load_robust_encoder("alice/church-xl", subfolder="text_encoder_2")' in text
    assert json.loads((out / "robust_encoder.json").read_text())["layout"] == {
        "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}


def test_legacy_pickles_in_a_run_are_resaved_as_safetensors(tmp_path):
    from safetensors.torch import load_file

    full = make_run(tmp_path / "full")
    weights = full / "text_encoder" / "model.safetensors"
    expected = load_robust_encoder(full / "text_encoder")
    torch.save({f"text_model.{k}": v for k, v in load_file(weights).items()},  # transformers-4 names
               full / "text_encoder" / "pytorch_model.bin")
    weights.unlink()
    out = export_run(full, tmp_path / "full-out")
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert torch.equal(outputs(load_robust_encoder(out)), outputs(expected))

    base = make_base_pipeline(tmp_path / "base")
    lora = make_run(tmp_path / "lora", fmt="lora", base_model=str(base), base_dir=base)
    adapter = lora / "text_encoder" / "adapter_model.safetensors"
    tensors = load_file(adapter)
    torch.save(tensors, lora / "text_encoder" / "adapter_model.bin")
    adapter.unlink()
    out = export_run(lora, tmp_path / "lora-out")
    resaved = load_file(out / "adapter_model.safetensors")
    assert resaved.keys() == tensors.keys() and all(torch.equal(resaved[k], tensors[k]) for k in tensors)


# ------------------------------------------------------------------------------------------------ the card
def test_card_renders_parses_and_validates(full_run, tmp_path):
    out = export_run(full_run, tmp_path / "out", repo_id="alice/church-robust", license="mit")
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.license == "mit" and data.library_name == "transformers"
    assert data.base_model == ["CompVis/stable-diffusion-v1-4"] and data.pipeline_tag == "feature-extraction"
    assert {"robust-encoders", "concept-erasure", "advunlearn"} <= set(data.tags)
    assert data.model_name == "church-robust"

    metrics = {r.metric_name: r.metric_value for r in data.eval_results}
    assert metrics == {"Pre-ASR (no attack)": 0.0625, "ASR (UnlearnDiffAtk)": 0.125, "ASR (soft-prompt)": 0.25,
                       "Retain accuracy": 0.9375, "CLIP score": 0.3125, "FID-style distance": 12.5}
    assert all(r.task_type == "text-to-image" and r.dataset_config == "tiny-detector" for r in data.eval_results)

    # the metadata is well-formed: strict re-validation and a model-index round trip
    as_dict = data.to_dict()
    ModelCardData(**as_dict)  # ignore_metadata_errors=False: raises on a malformed model-index
    name, parsed = model_index_to_eval_results(as_dict["model-index"])
    assert name == "church-robust" and len(parsed) == 6
    assert [(r.dataset_type, r.metric_type) for r in parsed][:2] == [
        ("robust-encoders/church-prompts", "attack_success_rate")] * 2

    text = card.text
    for needle in ("| Pre-ASR (no attack) | 6.2% | ↓ |", "| ASR — UnlearnDiffAtk | 12.5% | ↓ |",
                   "| Retain accuracy | 93.8% | ↑ |", "| CLIP score | 0.3125 | ↑ |", "| FID-style distance | 12.5 | ↓ |",
                   'pipe.text_encoder = load_robust_encoder("alice/church-robust")',
                   "  tokens: 3", "  lr: 1.0e-05", GENERATED_START, GENERATED_END):
        assert needle in text, needle


def test_card_without_evaluation(tmp_path):
    run = make_run(tmp_path / "run")  # no eval/results.json
    out = export_run(run, tmp_path / "out")
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    assert "has not been evaluated yet" in card.text
    assert 'load_robust_encoder("path/to/out")' in card.text


def test_template_at_repo_root_is_the_packaged_one():
    root_copy = REPO_ROOT / "model_cards" / "robust_encoder_card.md"
    assert root_copy.read_text(encoding="utf-8") == template_path().read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ README merge
def test_reexport_merges_readme_and_keeps_user_text(full_run, tmp_path):
    out = export_run(full_run, tmp_path / "out", repo_id="alice/church-robust")
    readme = out / "README.md"
    card = ModelCard.load(readme)  # the user edits the metadata ...
    card.data.license, card.data.language, card.data.datasets = "apache-2.0", "en", ["alice/church-prompts"]
    card.data.tags.append("my-own-tag")
    card.data.eval_results.append(EvalResult(task_type="text-to-image", dataset_type="other-org/bench",
                                             dataset_name="Other bench", metric_type="accuracy", metric_value=0.5))
    card.save(readme)
    user_prose = "\n## Our notes\n\nWe tested this on 200 extra prompts; see the discussion tab.\n"
    readme.write_text(readme.read_text() + user_prose)  # ... and adds prose after the generated block

    better = dict(EVAL_RESULTS, asr={"UnlearnDiffAtk": 0.0625, "soft-prompt": 0.125})
    with pytest.raises(ExportExistsError, match="overwrite"):
        export_run(full_run, out, eval_results=better)
    export_run(full_run, out, eval_results=better, repo_id="alice/church-robust", overwrite=True)

    merged = readme.read_text()
    assert merged.rstrip().endswith(user_prose.strip())  # prose after the block kept verbatim
    card = ModelCard.load(readme)
    assert card.data.license == "apache-2.0"  # user's choice kept
    assert card.data.language == "en" and card.data.datasets == ["alice/church-prompts"]
    assert "my-own-tag" in card.data.tags and "concept-erasure" in card.data.tags
    metrics = {(r.dataset_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert metrics[("robust-encoders/church-prompts", "ASR (UnlearnDiffAtk)")] == 0.0625  # updated ...
    assert len(metrics) == 7  # ... not duplicated, and the user's own entry is kept
    assert metrics[("other-org/bench", None)] == 0.5
    assert "| ASR — UnlearnDiffAtk | 6.2% | ↓ |" in merged and merged.count(GENERATED_START) == 1


def test_hand_written_readme_in_destination_is_kept(full_run, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    mine = "---\nlicense: cc-by-4.0\nthumbnail: church.png\n---\n\n# My church encoder\n\nHand-written intro.\n"
    (dest / "README.md").write_text(mine)
    export_run(full_run, dest)  # only a README there: no overwrite needed, and it is merged
    text = (dest / "README.md").read_text()
    assert "# My church encoder\n\nHand-written intro." in text
    assert text.index(GENERATED_END) < text.index("# My church encoder")
    card = ModelCard.load(dest / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.thumbnail == "church.png"
    assert len(card.data.eval_results) == 6


def test_invalid_yaml_in_existing_readme_is_not_clobbered(full_run, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "README.md").write_text("---\nlicense: [unclosed\n---\nmine\n")
    with pytest.raises(ExportError, match="not valid YAML"):
        export_run(full_run, dest)
    assert (dest / "README.md").read_text() == "---\nlicense: [unclosed\n---\nmine\n"


# ------------------------------------------------------------------------------------------------ safety
def test_failed_export_leaves_previous_export_untouched(full_run, tmp_path, monkeypatch):
    import robust_encoders.hub.export as export_mod

    out = export_run(full_run, tmp_path / "out")
    before = digest_tree(out)

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk full while rendering")

    monkeypatch.setattr(export_mod, "_card", broken_card)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(full_run, out, overwrite=True)
    assert digest_tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left behind


def test_bad_inputs_are_explained(full_run, tmp_path):
    with pytest.raises(ExportError, match="robust_encoder.json is missing"):
        export_run(tmp_path, tmp_path / "out")
    with pytest.raises(ExportError, match="looks like a percentage"):
        export_run(full_run, tmp_path / "a", eval_results=dict(EVAL_RESULTS, pre_asr=12.5))
    with pytest.raises(ExportError, match="wrong results file"):
        export_run(full_run, tmp_path / "b", eval_results=dict(EVAL_RESULTS, concept="nudity"))
    with pytest.raises(ExportError, match="'asr' must map each attack"):
        export_run(full_run, tmp_path / "c", eval_results={"concept": "church"})
    with pytest.raises(ExportError, match="would contain the run folder"):
        export_run(full_run, full_run.parent, overwrite=True)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
