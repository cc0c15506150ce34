"""Push an exported encoder folder to the Hugging Face Hub (``create_repo`` + ``upload_folder``).

* The token comes from ``token=``, else the usual places (``HF_TOKEN``, ``hf auth login``).
* ``dry_run=True`` prints the plan (endpoint, repo, branch or pull request, files and sizes) and sends nothing.
* The local folder is only read, never written: a push that fails half-way (network, HTTP 5xx, a dropped
  connection) leaves it byte-identical, and re-running the same call resumes (unchanged files are skipped).
* Errors are translated into :class:`~robust_encoders.hub.errors.HubAuthError` (no / rejected token),
  :class:`~robust_encoders.hub.errors.HubPermissionError` (no write access),
  :class:`~robust_encoders.hub.errors.HubConnectionError` (Hub unreachable, offline mode) and
  :class:`~robust_encoders.hub.errors.HubUploadError` (the Hub failed mid-upload), each saying what to do.
* When the target (sub)folder already holds a robust-encoders export, files of the old export that the new one
  does not have (say ``model.safetensors`` after switching to a LoRA export) are deleted in the same commit, so
  loaders never see a mix of two exports. Nothing outside the export's own file names is ever deleted.

Example:
    >>> from robust_encoders.hub import push_to_hub
    >>> push_to_hub("exports/church", "me/church-robust", dry_run=True)   # doctest: +SKIP
    Push plan (dry run: nothing was sent)
      ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import HubAuthError, HubConnectionError, HubError, HubPermissionError, HubUploadError

__all__ = ["EXPORT_FILE_PATTERNS", "PushPlan", "PushResult", "plan_push", "push_to_hub"]

#: File names an export owns inside its target folder (relative paths, ``fnmatch`` patterns).
EXPORT_FILE_PATTERNS: tuple[str, ...] = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors",
    "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin",
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "robust_encoder.json",
    "text_encoder/*", "text_encoder_2/*",
)
_SKIP_DIRS = (".git", ".cache", "__pycache__")
_TRUE = {"1", "true", "yes", "on", "y", "t"}


@dataclass(frozen=True)
class PushPlan:
    """What a push would do; :meth:`describe` is the text ``dry_run`` prints."""

    folder: Path
    repo_id: str
    endpoint: str
    subfolder: str | None
    revision: str | None
    private: bool
    create_pr: bool
    files: tuple[tuple[str, int], ...]  # (path in repo, size in bytes)
    token_source: str | None  # "argument", "environment or login", or None when no token was found
    card_repo_id: str | None = None  # the repo id the card's snippet names, if any

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def describe(self, *, dry_run: bool = True) -> str:
        target = "a new pull request against main" if self.create_pr else f"branch {self.revision or 'main'}"
        lines = [
            "Push plan" + (" (dry run: nothing was sent)" if dry_run else ""),
            f"  endpoint  {self.endpoint}",
            f"  repo      {self.repo_id} (model repo, {'private' if self.private else 'public'} if created; "
            "created when missing)",
            f"  target    {target}, " + (f"folder {self.subfolder}/" if self.subfolder else "repo root"),
            f"  token     {'found (' + self.token_source + ')' if self.token_source else 'MISSING: log in first'}",
            f"  files     {len(self.files)} file(s), {_size(self.total_bytes)}",
        ]
        lines += [f"    {path:<48} {_size(size):>10}" for path, size in self.files]
        lines.append("  stale files of an earlier export in the target folder are deleted in the same commit")
        if self.card_repo_id and self.card_repo_id != self.location:
            lines.append(f"  note: the model card's snippet loads {self.card_repo_id!r}, not {self.location!r}; "
                         f"re-export with --repo-id {self.location} to fix it")
        return "\n".join(lines)

    @property
    def location(self) -> str:
        """``repo_id`` or ``repo_id/subfolder``: the name to load the pushed encoder by."""
        return f"{self.repo_id}/{self.subfolder}" if self.subfolder else self.repo_id


@dataclass(frozen=True)
class PushResult:
    """Outcome of :func:`push_to_hub`. ``commit_url``/``commit_oid`` are ``None`` for a dry run."""

    plan: PushPlan
    dry_run: bool
    commit_url: str | None = None
    commit_oid: str | None = None
    pr_url: str | None = None

    @property
    def url(self) -> str:
        """Web page of the pushed folder (or pull request)."""
        if self.pr_url:
            return self.pr_url
        rev = self.plan.revision or "main"
        sub = f"/{self.plan.subfolder}" if self.plan.subfolder else ""
        return f"{self.plan.endpoint}/{self.plan.repo_id}/tree/{rev}{sub}"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _endpoint(endpoint: str | None) -> str:
    if endpoint:
        return endpoint.rstrip("/")
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def _split_repo(repo_id: str, subfolder: str | None) -> tuple[str, str | None]:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = [p for p in str(repo_id).strip().strip("/").split("/") if p]
    if len(parts) > 2:
        if subfolder:
            raise ValueError(f"{repo_id!r} already names subfolder {'/'.join(parts[2:])!r}; do not also pass "
                             f"subfolder={subfolder!r}")
        subfolder = "/".join(parts[2:])
    if len(parts) < 2:
        raise ValueError(f"repo_id must be 'org/name' (your user name or an organisation), got {repo_id!r}")
    repo = "/".join(parts[:2])
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise ValueError(f"{repo!r} is not a valid Hub repo id: {exc}") from exc
    if subfolder is not None:
        subfolder = subfolder.strip("/") or None
        if subfolder and any(p in ("", ".", "..") for p in subfolder.split("/")):
            raise ValueError(f"subfolder {subfolder!r} must be a plain relative path inside the repo")
    return repo, subfolder


def plan_push(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushPlan:
    """Check the arguments and the folder and describe the push, without any network access.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: a bad repo id / subfolder, ``create_pr`` with a ``revision``, or a folder that is not an
            encoder export.
    """
    from huggingface_hub import get_token

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the folder `robust-encoders export` wrote")
    markers = ("robust_encoder.json", "config.json", "adapter_config.json")
    if not any((root / m).is_file() for m in markers):
        raise ValueError(
            f"{root} does not look like an exported encoder (no {', '.join(markers)}). Create one with "
            "`robust-encoders export RUN_DIR --out DIR` and push DIR."
        )
    repo, sub = _split_repo(repo_id, subfolder)
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            "create_pr=True opens a pull request against the default branch (main); do not also pass "
            f"revision={revision!r}. To push to a branch instead, pass only revision=."
        )
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(part in _SKIP_DIRS for part in rel.parts):
            files.append((f"{sub}/{rel.as_posix()}" if sub else rel.as_posix(), path.stat().st_size))
    token_source = "argument" if token else ("environment or login" if get_token() else None)
    card_repo = None
    meta_file = root / "robust_encoder.json"
    if meta_file.is_file():
        try:
            card_repo = json.loads(meta_file.read_text(encoding="utf-8")).get("repo_id")
        except (OSError, ValueError):
            card_repo = None
    return PushPlan(root, repo, _endpoint(endpoint), sub, None if create_pr else revision, private, create_pr,
                    tuple(files), token_source, card_repo)


def _network_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(connection-refused/timeout types, any-transport-failure types) of the HTTP stacks huggingface_hub uses
    (httpx2 for huggingface_hub 2.x, httpx for 1.x, requests before that)."""
    import importlib

    connect: list[type[BaseException]] = []
    transport: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        connect += [mod.ConnectError, mod.ConnectTimeout]
        transport.append(mod.TransportError)
    try:
        import requests
    except ImportError:  # pragma: no cover
        pass
    else:
        transport += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    return tuple(connect), tuple(transport)


def _translate(exc: BaseException, plan: PushPlan, stage: str) -> HubError | None:
    """A teaching :class:`HubError` for an exception raised by huggingface_hub / its HTTP stack, else ``None``."""
    from huggingface_hub import errors as hf_errors

    untouched = f"Nothing in {plan.folder} was changed."
    where = f"{plan.endpoint} ({stage})"
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return HubConnectionError(f"Cannot push: HF_HUB_OFFLINE is set, so huggingface_hub refuses network "
                                  f"access. Unset it and retry. {untouched}")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        server = getattr(exc, "server_message", None) or ""
        if status == 401:
            return HubAuthError(
                f"The Hub at {plan.endpoint} rejected the token (HTTP 401 during {stage}): it is invalid or "
                "expired. Create a token with write access at https://huggingface.co/settings/tokens, then "
                f"`hf auth login` or set HF_TOKEN. {untouched}\nHub said: {server or detail}"
            )
        if status == 403 or isinstance(exc, hf_errors.RepositoryNotFoundError):
            return HubPermissionError(
                f"The token may not write to {plan.repo_id} (HTTP {status} during {stage}). Use a token with "
                f"write access to the '{plan.repo_id.split('/')[0]}' namespace (a fine-grained token needs "
                "write permission on it), push to your own namespace, or ask a maintainer for access. "
                f"{untouched}\nHub said: {server or detail}"
            )
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return HubError(f"Revision {plan.revision!r} does not exist in {plan.repo_id} and could not be "
                            f"created. {untouched}\nHub said: {server or detail}")
        return HubUploadError(
            f"The Hub failed during {stage} (HTTP {status}). {untouched} The remote repo is unchanged unless a "
            "commit had already completed; run the same push again to finish (unchanged files are skipped)."
            f"\nHub said: {server or detail}"
        )
    connect, transport = _network_errors()
    if isinstance(exc, connect) or (isinstance(exc, transport) and stage == "create_repo"):
        return HubConnectionError(
            f"Cannot reach the Hub at {where}: {exc.__class__.__name__}: {exc}. Check the network connection "
            f"and proxy settings (HTTPS_PROXY), or HF_ENDPOINT if you use a mirror. {untouched}"
        )
    if isinstance(exc, transport):
        return HubUploadError(
            f"The connection to {where} broke mid-way: {exc.__class__.__name__}: {exc}. {untouched} Run the "
            "same push again to finish (unchanged files are skipped)."
        )
    if isinstance(exc, ValueError) and "Invalid metadata in README.md" in str(exc):
        return HubUploadError(f"The Hub rejected the model card's metadata: {exc}. Fix README.md (or re-export) "
                              f"and push again. {untouched}")
    return None


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload an exported folder to ``repo_id`` (created if missing) in one commit.

    Args:
        folder: the folder :func:`~robust_encoders.hub.export_run` wrote.
        repo_id: ``org/name`` (``org/name/subfolder`` also works, like ``subfolder=``).
        subfolder: folder inside the repo to upload into (several encoders can share one repo).
        revision: branch to commit to (created from main when missing). Default: main.
        private: make the repo private *if it is created now* (an existing repo keeps its visibility).
        create_pr: open a pull request instead of committing to the branch.
        token: a Hub token; default: ``HF_TOKEN`` or the one saved by ``hf auth login``.
        dry_run: print the plan and return without any network access.
        endpoint: Hub URL (default: ``HF_ENDPOINT`` if set, else https://huggingface.co).
        commit_message: default ``"Upload robust encoder with robust-encoders"``.

    Raises:
        HubAuthError, HubPermissionError, HubConnectionError, HubUploadError: see the module docstring; the
            local folder is untouched in every case.
        FileNotFoundError, ValueError: bad arguments (raised before any network access).
    """
    plan = plan_push(folder, repo_id, subfolder=subfolder, revision=revision, private=private,
                     create_pr=create_pr, token=token, endpoint=endpoint)
    if dry_run:
        print(plan.describe(dry_run=True))
        return PushResult(plan, dry_run=True)
    if plan.token_source is None:
        raise HubAuthError(
            "No Hugging Face token found, and pushing needs one with write access. Run `hf auth login` (or "
            "`huggingface-cli login`), set HF_TOKEN, or pass token=... / --token. Nothing was sent."
        )
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise HubConnectionError("Cannot push: HF_HUB_OFFLINE is set (offline mode). Unset it and retry. "
                                 "Nothing was sent.")

    from huggingface_hub import HfApi

    from .. import __version__

    api = HfApi(endpoint=plan.endpoint, token=token, library_name="robust-encoders", library_version=__version__)
    stage = "create_repo"
    try:
        # Ask first: cheaper than a write call, and create_repo(exist_ok=True) mishandles a 403 on an existing
        # repo when the endpoint is not huggingface.co (it builds RepoUrl without the endpoint).
        if not api.repo_exists(plan.repo_id, repo_type="model"):
            api.create_repo(plan.repo_id, private=private, exist_ok=True, repo_type="model")
        if plan.revision and plan.revision != "main":
            stage = "create_branch"
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        stage = "checking the target folder"
        base_rev = "main" if plan.create_pr else (plan.revision or "main")
        marker = f"{plan.subfolder}/robust_encoder.json" if plan.subfolder else "robust_encoder.json"
        replaces_export = api.file_exists(plan.repo_id, marker, revision=base_rev)
        stage = "upload"
        info = api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=str(plan.folder),
            path_in_repo=plan.subfolder,
            revision=plan.revision,
            create_pr=plan.create_pr,
            commit_message=commit_message or "Upload robust encoder with robust-encoders",
            delete_patterns=list(EXPORT_FILE_PATTERNS) if replaces_export else None,
            ignore_patterns=[f"{d}/*" for d in _SKIP_DIRS] + [f"*/{d}/*" for d in _SKIP_DIRS],
        )
    except Exception as exc:
        translated = _translate(exc, plan, stage)
        if translated is None:
            raise
        raise translated from exc
    return PushResult(plan, dry_run=False, commit_url=getattr(info, "commit_url", None),
                      commit_oid=getattr(info, "oid", None), pr_url=getattr(info, "pr_url", None))
