"""Fetching encoder files from the Hugging Face Hub, fast and clear when offline.

All downloads go through :func:`huggingface_hub.snapshot_download` with ``allow_patterns`` so only the files
needed are fetched. Before going online, the Hub endpoint is probed with a short TCP connect (bounded by
``ROBUST_ENCODERS_HUB_TIMEOUT`` seconds, default 5): with no network the loader falls back to the local cache at
once instead of hanging, and fails with a message that names the repo, the subfolder and how to pre-download.

Environment variables read *at call time* (not import time, so tests and notebooks can flip them):

- ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``: cache only, never touch the network.
- ``HF_ENDPOINT``: the Hub (or mirror) to use.
- ``ROBUST_ENCODERS_HUB_TIMEOUT``: seconds for the reachability probe and metadata requests.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import EncoderNotFoundError

__all__ = ["HubLocation", "fetch_snapshot", "hub_endpoint", "hub_timeout", "offline_reason", "probe_endpoint"]

_TRUE = {"1", "true", "yes", "on", "y", "t"}
DEFAULT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubLocation:
    """A folder on the Hub: ``repo_id`` + optional ``subfolder`` and ``revision``; ``name`` is the registry name
    it came from, if any (used in messages)."""

    repo_id: str
    subfolder: str | None = None
    revision: str | None = None
    name: str | None = None

    def describe(self) -> str:
        out = f"Hub repo '{self.repo_id}'"
        if self.subfolder:
            out += f", subfolder '{self.subfolder}'"
        if self.revision:
            out += f", revision '{self.revision}'"
        return out

    def child(self, sub: str) -> HubLocation:
        joined = f"{self.subfolder}/{sub}" if self.subfolder else sub
        return HubLocation(self.repo_id, joined, self.revision, self.name)

    def remedies(self) -> str:
        """Teaching text: how to get these files onto this machine, or what to pass instead."""
        include = f' --include "{self.subfolder}/*"' if self.subfolder else ""
        rev = f" --revision {self.revision}" if self.revision else ""
        lines = ["To fix it, do one of these:"]
        target = self.name or (f"{self.repo_id}/{self.subfolder}" if self.subfolder else self.repo_id)
        lines.append(
            "  * pre-download on a machine with network (then copy its Hugging Face cache folder here, or set "
            "HF_HOME to it):"
        )
        lines.append(f"        robust-encoders pull {target}")
        lines.append(f"        hf download {self.repo_id}{include}{rev}")
        lines.append(f"    (older huggingface_hub: huggingface-cli download {self.repo_id}{include}{rev})")
        folder = self.subfolder.rsplit("/", 1)[-1] if self.subfolder else self.repo_id.split("/")[-1]
        lines.append(
            f"  * or point at a local copy: load_robust_encoder('/path/to/{folder}') "
            "(a folder with config.json and model.safetensors or pytorch_model.bin, or a peft adapter folder)"
        )
        lines.append("  * or pass cache_dir=... if the files are in a Hugging Face cache somewhere else")
        return "\n".join(lines)


def offline_reason(local_files_only: bool | None = None) -> str | None:
    """Why the Hub must not be contacted (``None`` when going online is allowed)."""
    if local_files_only:
        return "local_files_only=True was passed"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(var, "")
        if value.strip().lower() in _TRUE:
            return f"{var}={value} is set (offline mode)"
    return None


def hub_endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` if set now, else huggingface_hub's default."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def hub_timeout() -> float:
    """Seconds allowed for the reachability probe and Hub metadata calls (``ROBUST_ENCODERS_HUB_TIMEOUT``)."""
    try:
        value = float(os.environ.get("ROBUST_ENCODERS_HUB_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


_probe_cache: dict[str, tuple[float, str | None]] = {}
_PROBE_TTL_S = 30.0


def _connect_target(endpoint: str) -> tuple[str, int, str]:
    """(host, port, label) that a request to ``endpoint`` would connect to first (its proxy, if any)."""
    parsed = urllib.parse.urlsplit(endpoint)
    scheme = parsed.scheme or "https"
    host = parsed.hostname or ""
    port = parsed.port or (443 if scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and host and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80), f"proxy {p.hostname}:{p.port}"
    return host, port, f"{host}:{port}"


def probe_endpoint(endpoint: str | None = None, timeout: float | None = None) -> str | None:
    """Try a TCP connection to the Hub (or its proxy). ``None`` if it answers, else the reason it does not.

    Bounded by ``timeout`` even when DNS itself hangs (the lookup runs in a daemon thread). Results are cached
    for 30 s per endpoint.
    """
    endpoint = endpoint or hub_endpoint()
    timeout = timeout or hub_timeout()
    cached = _probe_cache.get(endpoint)
    if cached is not None and time.monotonic() - cached[0] < _PROBE_TTL_S:
        return cached[1]
    host, port, label = _connect_target(endpoint)
    result: list[str | None] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(f"cannot connect to {label} ({exc.__class__.__name__}: {exc})")

    thread = threading.Thread(target=attempt, daemon=True, name="robust-encoders-hub-probe")
    thread.start()
    thread.join(timeout + 0.5)
    reason = result[0] if result else f"no answer from {label} within {timeout:g} s"
    _probe_cache[endpoint] = (time.monotonic(), reason)
    return reason


def fetch_snapshot(
    loc: HubLocation,
    patterns: list[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> tuple[Path, str | None]:
    """Download (or find in the cache) the files of ``loc`` matching ``patterns`` (relative to the subfolder).

    Returns the snapshot root folder (the subfolder is *not* appended) and, when the Hub was not contacted,
    why not (offline mode, unreachable). Never hangs for long offline: see the module docstring. The caller
    checks that the files it needs are actually there (an offline cache hit may be partial).

    Raises:
        EncoderNotFoundError: the repo/revision does not exist, or the files are not cached and the Hub is
            unreachable / offline mode is on. The message says how to pre-download or what to pass instead.
    """
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import snapshot_download

    prefix = f"{loc.subfolder.strip('/')}/" if loc.subfolder else ""
    allow = [prefix + p for p in patterns]
    reason = offline_reason(local_files_only)
    endpoint = hub_endpoint()
    timeout = hub_timeout()
    if reason is None:
        reason = probe_endpoint(endpoint)
    try:
        if reason is None:
            reason = _preflight(loc, endpoint, timeout)
        offline = reason is not None
        path = snapshot_download(
            loc.repo_id,
            revision=loc.revision,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            allow_patterns=allow,
            local_files_only=offline,
            endpoint=endpoint,
            etag_timeout=timeout,
            library_name="robust-encoders",
        )
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as exc:
        raise EncoderNotFoundError(
            f"{loc.describe()} was not found on the Hub ({endpoint}), or it is private/gated and this machine "
            f"is not logged in (`hf auth login`). Check the spelling, or pass a local folder instead.\n"
            f"Hub said: {exc}"
        ) from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise EncoderNotFoundError(
            f"{loc.describe()}: revision '{loc.revision}' does not exist. Pass an existing branch, tag or "
            f"commit hash as revision=..., or leave it out for the default branch."
        ) from exc
    except hf_errors.HFValidationError as exc:
        raise EncoderNotFoundError(f"'{loc.repo_id}' is not a valid Hub repo id ('org/name'): {exc}") from exc
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, hf_errors.HfHubHTTPError,
            OSError) as exc:
        why = reason or f"the Hub could not be used ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        raise not_cached_error(loc, why, cache_dir) from exc
    return Path(path), reason


def _preflight(loc: HubLocation, endpoint: str, timeout: float) -> str | None:
    """One metadata request with a hard timeout (huggingface_hub's own client has none): ``None`` if the Hub
    answered, else why it is treated as unreachable. Repo/revision errors propagate to the caller."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    try:
        HfApi(endpoint=endpoint, library_name="robust-encoders").repo_info(
            loc.repo_id, revision=loc.revision, timeout=timeout
        )
    except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError, hf_errors.RevisionNotFoundError,
            hf_errors.HFValidationError):
        raise
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise
        return f"the Hub at {endpoint} answered with an error ({status})"
    except Exception as exc:  # transport errors (httpx/httpx2 ConnectError, ReadTimeout, ...), offline mode
        if "timeout" in type(exc).__name__.lower() or isinstance(exc, TimeoutError):
            return f"the Hub at {endpoint} did not answer within {timeout:g} s ({exc.__class__.__name__})"
        return f"cannot reach the Hub at {endpoint} ({exc.__class__.__name__}: {exc})"
    return None


def not_cached_error(
    loc: HubLocation, why: str | None, cache_dir: str | os.PathLike[str] | None = None
) -> EncoderNotFoundError:
    """The teaching error for "these Hub files are not on this machine"."""
    from huggingface_hub import constants

    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    what = f"'{loc.name}' ({loc.describe()})" if loc.name else loc.describe()
    because = f" and {why}" if why else ""
    return EncoderNotFoundError(
        f"Cannot load {what}: its files are not in the local Hugging Face cache ({cache}){because}.\n"
        + loc.remedies()
    )
