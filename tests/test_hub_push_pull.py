"""Push / pull round trips through the real huggingface_hub client against a local Hub-compatible server.

The server (``hub_server.py``) runs on 127.0.0.1 inside the test process and speaks the endpoints
huggingface_hub uses for create_repo, preupload + commit (regular, non-LFS uploads), branches, pull requests,
repo/revision info, tree listing and file resolve. Nothing leaves the machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub
import pytest
import torch

from hub_runs import EVAL_RESULTS, digest_tree, encoder_outputs, make_base_pipeline, make_run
from hub_server import HubServer
from robust_encoders import load_robust_encoder
from robust_encoders.hub import (
    HubAuthError,
    HubConnectionError,
    HubPermissionError,
    HubUploadError,
    export_run,
    pull,
    push_to_hub,
)
from robust_encoders.loading import EncoderNotFoundError
from robust_encoders.registry import UnknownEncoderError

PROMPT = "a photo of a church"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh in-memory Hub; the process has no saved login and no HF_TOKEN (tests pass tokens explicitly)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)  # read at call time by the loader
        yield server


@pytest.fixture(scope="module")
def full_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("push-full")
    run = make_run(root / "run", eval_results=EVAL_RESULTS)
    return export_run(run, root / "export", repo_id="alice/church-robust")


def remote_files(hub: HubServer, repo_id: str, rev: str = "main") -> dict[str, bytes]:
    return hub.repos[repo_id].files(rev)


def local_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_then_pull_full_encoder_loads_offline(hub, full_export, hf_cache, registry_sandbox, monkeypatch):
    before = digest_tree(full_export)
    result = push_to_hub(full_export, "alice/church-robust", token=hub.token, endpoint=hub.endpoint)
    assert result.commit_oid == hub.repos["alice/church-robust"].refs["main"]
    assert remote_files(hub, "alice/church-robust") == {
        **local_files(full_export), ".gitattributes": remote_files(hub, "alice/church-robust")[".gitattributes"]}
    assert digest_tree(full_export) == before
    assert hub.count("POST", "/api/validate-yaml") == 1  # the card's metadata passed the Hub-side check

    registry_sandbox.register_pretrained({
        "name": "church-test", "repo_id": "alice/church-robust", "concept": "church", "concept_kind": "object",
        "method": "AdvUnlearn", "license": "mit", "file_format": "safetensors",
        "base_models": ["CompVis/stable-diffusion-v1-4"], "families": ["sd1"]})
    folder = pull("church-test", cache_dir=hf_cache, endpoint=hub.endpoint)
    assert folder.parent.name == "snapshots" and (folder / "model.safetensors").is_file()
    pulled = local_files(folder)
    assert pulled.pop(".gitattributes") and pulled == local_files(full_export)

    requests_so_far = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_robust_encoder("church-test", cache_dir=hf_cache)
    assert torch.equal(encoder_outputs(loaded, PROMPT), encoder_outputs(load_robust_encoder(full_export), PROMPT))
    assert len(hub.log) == requests_so_far  # offline means offline


def test_lora_into_subfolder_as_pull_request_with_hub_base(hub, tmp_path, hf_cache, monkeypatch):
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=hub.token)
    base = make_base_pipeline(tmp_path / "base")
    api.create_repo("robust-org/tiny-sd")
    api.upload_folder(repo_id="robust-org/tiny-sd", folder_path=base)  # the base pipeline lives on the Hub too
    run = make_run(tmp_path / "run", fmt="lora", base_model="robust-org/tiny-sd", base_dir=base)
    out = export_run(run, tmp_path / "export", repo_id="robust-org/encoders/church")

    result = push_to_hub(out, "robust-org/encoders", subfolder="church", create_pr=True, token=hub.token,
                         endpoint=hub.endpoint)
    assert result.pr_url == f"{hub.endpoint}/robust-org/encoders/discussions/1"
    assert "church/adapter_config.json" not in remote_files(hub, "robust-org/encoders")  # main untouched
    assert remote_files(hub, "robust-org/encoders", "refs/pr/1")["church/adapter_model.safetensors"] == \
        (out / "adapter_model.safetensors").read_bytes()

    folder = pull("robust-org/encoders/church", revision="refs/pr/1", cache_dir=hf_cache, endpoint=hub.endpoint)
    assert (folder / "adapter_config.json").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # adapter *and* its Hub base must now be cached
    loaded = load_robust_encoder("robust-org/encoders/church", revision="refs/pr/1", cache_dir=hf_cache)
    expected = load_robust_encoder(run / "text_encoder")
    assert torch.equal(encoder_outputs(loaded, PROMPT), encoder_outputs(expected, PROMPT))


def test_push_to_branch_and_replace_previous_export(hub, full_export, tmp_path):
    push_to_hub(full_export, "alice/enc", revision="dev", token=hub.token, endpoint=hub.endpoint)
    assert "model.safetensors" in remote_files(hub, "alice/enc", "dev")
    assert "model.safetensors" not in remote_files(hub, "alice/enc", "main")

    # a user file next to the export, then a LoRA export replaces the full one on the same branch
    api = huggingface_hub.HfApi(endpoint=hub.endpoint, token=hub.token)
    api.upload_file(path_or_fileobj=b"keep me", path_in_repo="NOTES.txt", repo_id="alice/enc", revision="dev")
    base = make_base_pipeline(tmp_path / "base")
    lora = export_run(make_run(tmp_path / "run", fmt="lora", base_model=str(base), base_dir=base),
                      tmp_path / "lora-export")
    push_to_hub(lora, "alice/enc", revision="dev", token=hub.token, endpoint=hub.endpoint)
    files = remote_files(hub, "alice/enc", "dev")
    assert "model.safetensors" not in files and "config.json" not in files  # no mix of two exports
    assert {"adapter_config.json", "adapter_model.safetensors", "NOTES.txt", ".gitattributes"} <= set(files)


def test_dry_run_prints_the_plan_and_sends_nothing(hub, full_export, capsys):
    result = push_to_hub(full_export, "alice/church-robust", subfolder="v1", dry_run=True, endpoint=hub.endpoint)
    printed = capsys.readouterr().out
    assert result.dry_run and result.commit_oid is None
    assert hub.log == []
    assert "dry run: nothing was sent" in printed and "alice/church-robust" in printed
    assert "v1/model.safetensors" in printed and "MISSING" in printed  # no token in this process
    assert "re-export with --repo-id alice/church-robust/v1" in printed  # the card names another location


def test_no_token_is_refused_before_any_request(hub, full_export):
    with pytest.raises(HubAuthError, match="hf auth login"):
        push_to_hub(full_export, "alice/church-robust", endpoint=hub.endpoint)
    assert hub.log == []


def test_rejected_token(hub, full_export):
    before = digest_tree(full_export)
    with pytest.raises(HubAuthError, match="HTTP 401"):
        push_to_hub(full_export, "alice/church-robust", token="hf_not_a_real_token", endpoint=hub.endpoint)
    assert digest_tree(full_export) == before and hub.repos == {}


@pytest.mark.parametrize("existing", [False, True], ids=["new-repo", "someone-elses-repo"])
def test_no_write_permission(hub, full_export, existing):
    if existing:
        hub.create("bob/encoders")  # public: readable, not writable by alice's token
    with pytest.raises(HubPermissionError, match="may not write to bob/encoders"):
        push_to_hub(full_export, "bob/encoders", token=hub.token, endpoint=hub.endpoint)
    assert hub.count("POST", "/commit/") == 0


def test_network_down(full_export, closed_port, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    start = time.monotonic()
    with pytest.raises(HubConnectionError, match="Cannot reach the Hub"):
        push_to_hub(full_export, "alice/x", token="hf_any", endpoint=f"http://127.0.0.1:{closed_port}")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_push_failing_midway_leaves_the_export_intact(hub, full_export, mode, monkeypatch):
    # With hf_xet installed, upload_folder commits through a pipeline that retries 5xx with back-off for
    # ~25 s; the legacy single-commit path fails at once, which keeps this test fast. Same files, same commit.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    before = digest_tree(full_export)
    hub.fail("POST", r"/commit/", mode=mode)
    with pytest.raises(HubUploadError, match="run the same push again|Run the same push again"):
        push_to_hub(full_export, "alice/church-robust", token=hub.token, endpoint=hub.endpoint)
    assert hub.count("POST", "/preupload/") == 1  # it really failed mid-way, after the upload plan
    assert digest_tree(full_export) == before  # byte-identical, modes included
    assert set(remote_files(hub, "alice/church-robust")) == {".gitattributes"}

    push_to_hub(full_export, "alice/church-robust", token=hub.token, endpoint=hub.endpoint)  # resume
    assert remote_files(hub, "alice/church-robust")["model.safetensors"] == \
        (full_export / "model.safetensors").read_bytes()
    assert digest_tree(full_export) == before


def test_pull_errors_are_explained(hub, hf_cache, closed_port, monkeypatch):
    with pytest.raises(UnknownEncoderError, match="Did you mean"):
        pull("nuditty", cache_dir=hf_cache)
    with pytest.raises(EncoderNotFoundError, match="was not found"):
        pull("alice/does-not-exist", cache_dir=hf_cache, endpoint=hub.endpoint)
    with pytest.raises(HubConnectionError, match="could not be reached"):
        pull("alice/anything", cache_dir=hf_cache, endpoint=f"http://127.0.0.1:{closed_port}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubConnectionError, match="HF_HUB_OFFLINE"):
        pull("nudity", cache_dir=hf_cache)
