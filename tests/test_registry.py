"""The pretrained registry: data file, typed frozen specs, name normalisation, closest-name errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from robust_encoders import registry
from robust_encoders.registry import (
    PretrainedSpec,
    RegistryError,
    UnknownEncoderError,
    family_of_base_model,
    get_pretrained,
    list_pretrained,
    load_registry_file,
    normalize_name,
    register_pretrained,
    unregister_pretrained,
)

ADVUNLEARN = ["nudity", "vangogh", "church", "garbage_truck", "parachute", "tench"]


def _entry(**overrides):
    data = {
        "name": "my-encoder",
        "local_path": "/tmp/does-not-matter",
        "concept": "church",
        "concept_kind": "object",
        "method": "AdvUnlearn",
        "license": "cc-by-4.0",
        "file_format": "safetensors",
        "base_models": ["CompVis/stable-diffusion-v1-4"],
        "families": ["sd1"],
    }
    data.update(overrides)
    return data


def test_registry_is_packaged_data_file():
    assert registry.REGISTRY_FILE.is_file()
    data = json.loads(registry.REGISTRY_FILE.read_text())
    assert data["schema_version"] == 1
    names = [e["name"] for e in data["encoders"]]
    assert names[: len(ADVUNLEARN)] == ADVUNLEARN  # the public AdvUnlearn release first
    assert all(n.startswith("miniature/") for n in names[len(ADVUNLEARN):])  # then our packaged encoders


def test_six_advunlearn_entries_have_the_published_locations():
    specs = list_pretrained()
    assert [s.name for s in specs][:6] == ADVUNLEARN
    for spec in specs[:6]:
        assert isinstance(spec, PretrainedSpec)
        assert spec.repo_id == "OPTML-Group/AdvUnlearn"
        assert spec.subfolder == f"{spec.name}_unlearned"
        assert spec.base_models == ("CompVis/stable-diffusion-v1-4",)
        assert spec.families == ("sd1",)
        assert spec.license == "cc-by-4.0"
        assert spec.file_format == "bin"
        assert spec.method == "AdvUnlearn"
        assert spec.encoder_class == "CLIPTextModel"
        assert spec.source == "hub"
        assert spec.local_path is None
        assert spec.location == f"OPTML-Group/AdvUnlearn/{spec.name}_unlearned"
    kinds = {s.name: s.concept_kind for s in specs}
    assert kinds["nudity"] == "nudity"
    assert kinds["vangogh"] == "style"
    assert {kinds[n] for n in ("church", "garbage_truck", "parachute", "tench")} == {"object"}


def test_specs_are_frozen_and_typed():
    spec = get_pretrained("nudity")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    assert isinstance(spec.base_models, tuple) and isinstance(spec.families, tuple)
    assert PretrainedSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "query",
    ["garbage_truck", "Garbage Truck", "garbage-truck", "GARBAGE_TRUCK", "  garbage truck ", "garbage__truck"],
)
def test_name_normalisation(query):
    assert get_pretrained(query).name == "garbage_truck"


def test_aliases_and_spaced_names():
    assert get_pretrained("Van Gogh").name == "vangogh"
    assert get_pretrained("van-gogh").name == "vangogh"
    assert get_pretrained("NSFW").name == "nudity"
    assert normalize_name("Van Gogh") == normalize_name("van_gogh") == "vangogh"


@pytest.mark.parametrize(
    ("query", "suggestion"),
    [("nuditty", "nudity"), ("churhc", "church"), ("truck", "garbage_truck"), ("parachut", "parachute"),
     ("vanghog", "vangogh")],
)
def test_unknown_name_names_the_closest(query, suggestion):
    with pytest.raises(UnknownEncoderError) as info:
        get_pretrained(query)
    message = str(info.value)
    assert repr(query) in message
    assert f"'{suggestion}'" in message
    assert "robust-encoders list" in message
    assert isinstance(info.value, KeyError)  # except KeyError works too
    assert not message.startswith('"')  # not KeyError's repr-quoting


def test_unknown_name_with_nothing_close_lists_all():
    with pytest.raises(UnknownEncoderError) as info:
        get_pretrained("zzzzzz")
    for name in ADVUNLEARN:
        assert f"'{name}'" in str(info.value)


def test_filters():
    assert [s.name for s in list_pretrained(concept_kind="style")] == ["vangogh", "miniature/stripes"]
    assert [s.name for s in list_pretrained(concept_kind="style", family="sd1")] == ["vangogh"]
    assert [s.name for s in list_pretrained(concept_kind="colour")] == ["miniature/red"]
    assert [s.name for s in list_pretrained(concept_kind="nudity")] == ["nudity"]
    assert len(list_pretrained(family="sd1")) >= 6
    assert list_pretrained(family="sdxl") == [s for s in list_pretrained() if "sdxl" in s.families]
    with pytest.raises(ValueError, match="concept_kind"):
        list_pretrained(concept_kind="colours")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"concept_kind": "animal"}, "concept_kind"),
        ({"file_format": "ckpt"}, "file_format"),
        ({"families": []}, "families"),
        ({"families": ["SD 1"]}, "family"),
        ({"repo_id": "org/repo"}, "exactly one"),
        ({"local_path": None}, "exactly one"),
        ({"local_path": None, "repo_id": "not a repo"}, "org/name"),
        ({"encoder_class": "T5EncoderModel"}, "encoder_class"),
        ({"colour": "red"}, "unknown field"),
        ({"license": ""}, "license"),
    ],
)
def test_invalid_entries_are_rejected(overrides, match):
    with pytest.raises(RegistryError, match=match):
        PretrainedSpec.from_dict(_entry(**overrides))


def test_missing_field_is_rejected():
    data = _entry()
    del data["license"]
    with pytest.raises(RegistryError, match="missing"):
        PretrainedSpec.from_dict(data)


def test_registry_file_validation(tmp_path):
    path = tmp_path / "reg.json"
    good = {"schema_version": 1, "encoders": [_entry(local_path="miniature/church", name="miniature/church")]}
    path.write_text(json.dumps(good))
    (spec,) = load_registry_file(path)
    assert spec.source == "package"
    assert spec.resolve_local_path() == registry.PACKAGE_DIR / "miniature" / "church"
    assert spec.location == "package:miniature/church"

    for bad_path in ("../outside", "/abs/path"):
        path.write_text(json.dumps({"schema_version": 1, "encoders": [_entry(local_path=bad_path)]}))
        with pytest.raises(RegistryError, match="inside"):
            load_registry_file(path)

    dup = {"schema_version": 1, "encoders": [_entry(name="a-b", local_path="x"), _entry(name="a_b", local_path="y")]}
    path.write_text(json.dumps(dup))
    with pytest.raises(RegistryError, match="collide"):
        load_registry_file(path)

    path.write_text(json.dumps({"encoders": []}))
    with pytest.raises(RegistryError, match="schema_version"):
        load_registry_file(path)


def test_register_and_unregister(registry_sandbox, tmp_path):
    spec = register_pretrained(_entry(name="My Church", local_path=str(tmp_path)))
    assert get_pretrained("my_church") is spec
    assert spec.resolve_local_path() == tmp_path
    with pytest.raises(RegistryError, match="clashes"):
        register_pretrained(_entry(name="my-church"))
    replaced = register_pretrained(_entry(name="my-church", concept="chapel"), overwrite=True)
    assert get_pretrained("MY CHURCH").concept == "chapel" and replaced.name == "my-church"
    unregister_pretrained("my church")
    with pytest.raises(UnknownEncoderError):
        get_pretrained("my church")


def test_family_of_base_model():
    assert family_of_base_model("CompVis/stable-diffusion-v1-4") == "sd1"
    assert family_of_base_model("runwayml/stable-diffusion-v1-5") == "sd1"
    assert family_of_base_model("stabilityai/stable-diffusion-2-1") == "sd2"
    assert family_of_base_model("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert family_of_base_model("someone/unknown") is None
    assert family_of_base_model(None) is None


def test_download_command_for_hub_entries():
    assert get_pretrained("church").download_command() == (
        'hf download OPTML-Group/AdvUnlearn --include "church_unlearned/*"'
    )


def test_import_is_light():
    """`import robust_encoders` and registry use must not import torch/diffusers/transformers."""
    code = (
        "import sys, robust_encoders as r; r.list_pretrained(); r.get_pretrained('nudity'); "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules]; "
        "print(heavy); assert not heavy, heavy; assert r.__version__; "
        "assert set(r.__all__) <= set(dir(r)); assert set(r.__all__) == {'__version__', *r._LAZY}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_lazy_attributes_resolve():
    import robust_encoders

    assert robust_encoders.load_robust_encoder.__name__ == "load_robust_encoder"
    assert robust_encoders.apply_robust_encoder.__name__ == "apply_robust_encoder"
    assert robust_encoders.PretrainedSpec is PretrainedSpec
    with pytest.raises(AttributeError):
        robust_encoders.does_not_exist  # noqa: B018
