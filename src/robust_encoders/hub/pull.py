"""Pre-download a robust encoder into the Hugging Face cache, so later loads work offline.

``pull("nudity")`` looks the name up in the registry (:func:`robust_encoders.get_pretrained`), downloads the
entry's folder (``snapshot_download(repo_id, allow_patterns=f"{subfolder}/*", revision=...)``), fetches the base
encoder of a LoRA adapter too, and then checks — with the network off — that
:func:`robust_encoders.load_robust_encoder` finds everything it needs. Hub ids (``"org/repo"`` or
``"org/repo/subfolder"``) work as well as registry names.

Example:
    >>> from robust_encoders.hub import pull
    >>> pull("nudity")                     # doctest: +SKIP
    PosixPath('~/.cache/huggingface/hub/models--OPTML-Group--AdvUnlearn/snapshots/<sha>/nudity_unlearned')
    >>> # later, on a plane:
    >>> load_robust_encoder("nudity", local_files_only=True)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .errors import HubConnectionError, HubError

__all__ = ["pull"]

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/.+)?$")


@contextlib.contextmanager
def _hf_endpoint(endpoint: str) -> Iterator[None]:
    """Make the loader (which reads ``HF_ENDPOINT`` at call time) use ``endpoint`` for the duration."""
    old = os.environ.get("HF_ENDPOINT")
    os.environ["HF_ENDPOINT"] = endpoint
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = old


def _has_adapter(folder: Path) -> bool:
    return any((folder / sub / "adapter_config.json").is_file() for sub in (".", "text_encoder", "text_encoder_2"))


def pull(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Download a registry entry (or Hub ``org/repo[/subfolder]``) into the HF cache; return its local folder.

    Args:
        name: a registry name (``robust-encoders list``), or a Hub id ``org/repo`` / ``org/repo/subfolder``.
        cache_dir: Hugging Face cache folder (default: the standard cache, ``HF_HUB_CACHE`` / ``HF_HOME``).
        revision: branch, tag or commit (default: the registry entry's revision, else main).
        endpoint: Hub URL (default: ``HF_ENDPOINT`` if set, else https://huggingface.co).
        token: for private or gated repos (default: ``HF_TOKEN`` / ``hf auth login``).

    Returns:
        The folder holding the encoder's files (the entry's subfolder inside the cached snapshot). For entries
        shipped inside the package, their folder (nothing is downloaded).

    Raises:
        UnknownEncoderError: ``name`` is neither a registry name nor a Hub id (lists the closest names).
        EncoderNotFoundError: the repo, revision or subfolder does not exist (or is private without a token).
        HubConnectionError: the Hub is unreachable or ``HF_HUB_OFFLINE`` is set, and the files are not cached.
        HubError: the download finished but the loader would still miss files.
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    from ..loading import EncoderNotFoundError, download_robust_encoder
    from ..registry import UnknownEncoderError, get_pretrained
    from .push import _endpoint, _network_errors

    try:
        spec = get_pretrained(name)
    except UnknownEncoderError:
        if not _REPO_RE.match(name.strip()) or Path(name).expanduser().exists():
            raise
        parts = name.strip().strip("/").split("/")
        repo_id, subfolder, rev, label = "/".join(parts[:2]), "/".join(parts[2:]) or None, revision, name
    else:
        local = spec.resolve_local_path()
        if local is not None:
            if not local.exists():
                raise EncoderNotFoundError(f"{spec.name!r} ships with the package at {local}, which is missing: "
                                           "reinstall robust-encoders.")
            return local
        assert spec.repo_id is not None
        repo_id, subfolder, rev, label = spec.repo_id, spec.subfolder, revision or spec.revision, spec.name

    where = f"{repo_id}" + (f", subfolder {subfolder}" if subfolder else "") + (f", revision {rev}" if rev else "")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise HubConnectionError(f"Cannot pull {label!r} ({where}): HF_HUB_OFFLINE is set. Pulling needs the "
                                 "network; unset HF_HUB_OFFLINE, or run the pull on a machine that has it and copy "
                                 "its Hugging Face cache here.")
    hub = _endpoint(endpoint)
    try:
        snapshot = snapshot_download(
            repo_id, revision=rev, cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            allow_patterns=[f"{subfolder}/*"] if subfolder else None, endpoint=hub, token=token,
            library_name="robust-encoders",
        )
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as exc:
        raise EncoderNotFoundError(
            f"Cannot pull {label!r}: {repo_id} was not found on {hub}, or it is private/gated and this machine "
            f"has no token with access (`hf auth login`).\nHub said: {exc}"
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise EncoderNotFoundError(f"Cannot pull {label!r}: revision {rev!r} does not exist in {repo_id}. Pass an "
                                   "existing branch, tag or commit, or leave --revision out.") from exc
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, *_network_errors()[1]) as exc:
        raise HubConnectionError(
            f"Cannot pull {label!r} ({where}): the Hub at {hub} could not be reached and the files are not in the "
            f"cache. Check the network / proxy (HTTPS_PROXY) or HF_ENDPOINT, then retry.\nDetails: {exc}"
        ) from exc

    folder = Path(snapshot) / subfolder if subfolder else Path(snapshot)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise EncoderNotFoundError(f"{repo_id} has no files under '{subfolder}/' at revision {rev or 'main'}: "
                                   "check the subfolder name on the repo's 'Files' tab.")
    with _hf_endpoint(hub):
        try:
            if _has_adapter(folder):  # a LoRA adapter: its base encoder must be cached too
                download_robust_encoder(folder, cache_dir=cache_dir)
            # The promise of `pull`: loading now works with the network off.
            download_robust_encoder(name, revision=revision, cache_dir=cache_dir, local_files_only=True)
        except EncoderNotFoundError as exc:
            raise HubError(f"Downloaded {label!r} to {folder}, but loading it offline would still fail:\n{exc}"
                           ) from exc
    return folder
