"""``load_robust_encoder``: one call for every way a robust text encoder is shipped.

Accepted inputs (first match wins):

1. a local path: a ``save_pretrained`` folder, a diffusers pipeline folder (its ``text_encoder/``), a peft LoRA
   adapter folder, or a single ``.safetensors`` (or legacy ``.bin``) weights file;
2. a registry name (``"nudity"``; see :func:`robust_encoders.list_pretrained`);
3. a Hub repo id, with the subfolder as ``subfolder=`` or appended: ``"OPTML-Group/AdvUnlearn/nudity_unlearned"``.

Files are found first (downloading only what is needed), then models are built; :func:`download_robust_encoder`
does only the first half, for pre-fetching.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import torch

from ..registry import PretrainedSpec, UnknownEncoderError, family_of_base_model, get_pretrained
from .adapter import (
    ADAPTER_BIN,
    ADAPTER_SAFETENSORS,
    adapter_weights_file,
    apply_adapter,
    read_adapter_config,
)
from .checkpoint import (
    BIN_PATTERNS,
    SAFETENSORS_PATTERNS,
    build_text_model,
    find_weights,
    fit_state_dict,
    parse_dtype,
    read_state_dict,
    read_weights_file,
    text_config_from_dict,
)
from .errors import CheckpointMismatchError, EncoderNotFoundError
from .hub import HubLocation, fetch_snapshot, not_cached_error

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

__all__ = ["ENCODER_SLOTS", "EncoderModel", "download_robust_encoder", "encoder_info", "load_robust_encoder"]

#: The pipeline attributes that hold text encoders, in SDXL order.
ENCODER_SLOTS: tuple[str, ...] = ("text_encoder", "text_encoder_2")
EncoderModel = Union["CLIPTextModel", "CLIPTextModelWithProjection"]
PathLike = Union[str, "os.PathLike[str]"]

_METADATA = ["config.json", "adapter_config.json", "model_index.json", "robust_encoder.json",
             "text_encoder/config.json", "text_encoder/adapter_config.json",
             "text_encoder_2/config.json", "text_encoder_2/adapter_config.json"]
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/[^\s]+)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_INFO_ATTR = "_robust_encoders_info"
_MAX_DEPTH = 4


# ---------------------------------------------------------------------------------------------------- folders
class _Folder:
    """A folder that is local already, or a Hub (sub)folder whose files are fetched on demand."""

    def __init__(self, *, local: Path | None = None, hub: HubLocation | None = None,
                 cache_dir: PathLike | None = None, local_files_only: bool | None = None) -> None:
        self.local, self.hub = local, hub
        self.cache_dir, self.local_files_only = cache_dir, local_files_only
        self._root: Path | None = None
        self._offline_reason: str | None = None

    @property
    def label(self) -> str:
        if self.hub is not None:
            return f"{self.hub.repo_id}/{self.hub.subfolder}" if self.hub.subfolder else self.hub.repo_id
        return str(self.local)

    @property
    def path(self) -> Path:
        if self.local is not None:
            return self.local
        if self._root is None:
            self.ensure(_METADATA)
        assert self._root is not None and self.hub is not None
        return self._root / self.hub.subfolder if self.hub.subfolder else self._root

    def ensure(self, patterns: list[str]) -> Path:
        """Make the files matching ``patterns`` (relative to this folder) local; return the folder path."""
        if self.hub is None:
            return self.path
        loc = self.hub
        if self._root is not None and loc.revision is None:
            # pin later fetches to the commit we already resolved: no second API round-trip, consistent files
            loc = HubLocation(loc.repo_id, loc.subfolder, self._root.name, loc.name)
        self._root, self._offline_reason = fetch_snapshot(
            loc, patterns, cache_dir=self.cache_dir, local_files_only=self.local_files_only
        )
        return self.path

    def child(self, name: str) -> _Folder:
        if self.hub is None:
            return _Folder(local=self.path / name)
        out = _Folder(hub=self.hub.child(name), cache_dir=self.cache_dir, local_files_only=self.local_files_only)
        out._root, out._offline_reason = self._root, self._offline_reason
        return out

    def missing(self, what: str, looked_for: list[str]) -> Exception:
        """The error for files that should be in this folder but are not."""
        if self.hub is None:
            return EncoderNotFoundError(f"{self.path} has no {what} (looked for {', '.join(looked_for)})")
        if self._offline_reason is not None:
            return not_cached_error(self.hub, self._offline_reason, self.cache_dir)
        rev = self.hub.revision or "main"
        sub = f"/{self.hub.subfolder}" if self.hub.subfolder else ""
        return EncoderNotFoundError(
            f"{self.hub.describe()} has no {what} (looked for {', '.join(looked_for)}). Browse "
            f"https://huggingface.co/{self.hub.repo_id}/tree/{rev}{sub} to find the right subfolder, and pass "
            "it as subfolder=... or as 'org/repo/subfolder'."
        )


# ---------------------------------------------------------------------------------------------------- planning
@dataclass
class _Plan:
    """What to build, with every file already local."""

    kind: Literal["full", "file", "peft", "pipeline"]
    path: Path
    label: str
    spec: PretrainedSpec | None = None
    children: dict[str, _Plan] = field(default_factory=dict)
    base: _Plan | torch.nn.Module | None = None
    base_ref: str | None = None
    file_config: dict[str, Any] | None = None


@dataclass
class _Target:
    folder: _Folder
    filename: str | None
    spec: PretrainedSpec | None
    label: str


#: The name runs and adapters trained on the embedded miniature SD world record as their base (a path on the
#: training machine would mean nothing elsewhere); it resolves to the pipeline shipped in the package.
MINIATURE_BASE = "miniature"


def _looks_like_local_path(text: str) -> bool:
    return (text.startswith(("/", "./", "../", "~", "\\")) or text in (".", "..")
            or bool(re.match(r"^[A-Za-z]:[\\/]", text)) or "\\" in text)


def _resolve(name_or_path: PathLike, *, subfolder: str | None, revision: str | None,
             cache_dir: PathLike | None, local_files_only: bool | None) -> _Target:
    is_pathlike = not isinstance(name_or_path, str)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    hub_kw: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    if path.exists():
        if path.is_file():
            if subfolder:
                raise ValueError(f"subfolder={subfolder!r} makes no sense for the single file {path}")
            return _Target(_Folder(local=path.parent.resolve()), path.name, None, str(path))
        folder = path.resolve() / subfolder if subfolder else path.resolve()
        return _Target(_Folder(local=folder), None, None, str(folder))
    if is_pathlike or _looks_like_local_path(text):
        raise EncoderNotFoundError(f"No such file or folder: {path}")
    if text.strip().lower() == MINIATURE_BASE:  # the embedded miniature world: a base, not a robust encoder
        from ..miniature.io import WEIGHTS_DIR

        folder = WEIGHTS_DIR / "pipeline"
        if subfolder:
            folder = folder / subfolder
        return _Target(_Folder(local=folder), None, None, text)

    try:
        spec = get_pretrained(text)
    except UnknownEncoderError as exc:
        unknown: UnknownEncoderError | None = exc
    else:
        unknown = None
        local = spec.resolve_local_path()
        if local is not None:
            if not local.exists():
                raise EncoderNotFoundError(
                    f"Registry entry {spec.name!r} points at packaged files in {local}, which are missing: the "
                    "installation is incomplete. Reinstall robust-encoders (pip install --force-reinstall ...)."
                )
            folder = local / subfolder if subfolder else local
            return _Target(_Folder(local=folder), None, spec, spec.name)
        assert spec.repo_id is not None
        sub = "/".join(p for p in (spec.subfolder, subfolder) if p) or None
        loc = HubLocation(spec.repo_id, sub, revision or spec.revision, spec.name)
        return _Target(_Folder(hub=loc, **hub_kw), None, spec, spec.name)

    if _REPO_ID_RE.match(text):
        parts = text.strip("/").split("/")
        repo_id, rest = "/".join(parts[:2]), "/".join(parts[2:]) or None
        if rest and subfolder:
            raise ValueError(
                f"{text!r} already names subfolder {rest!r}; do not also pass subfolder={subfolder!r}"
            )
        sub = rest or subfolder
        filename = None
        if sub and sub.endswith(_WEIGHT_SUFFIXES):
            sub, _, filename = sub.rpartition("/")
            sub = sub or None
        loc = HubLocation(repo_id, sub, revision)
        label = f"{repo_id}/{sub}" if sub else repo_id
        return _Target(_Folder(hub=loc, **hub_kw), filename, None, label + (f"/{filename}" if filename else ""))

    raise EncoderNotFoundError(
        f"{text!r} is not a local path, a Hub repo id ('org/repo' or 'org/repo/subfolder'), or a registry name. "
        f"{unknown}"
    )


def _layout(path: Path) -> Literal["peft", "full", "pipeline"] | None:
    if (path / "adapter_config.json").is_file():
        return "peft"
    if (path / "config.json").is_file():
        return "full"
    if (path / "model_index.json").is_file() or any(
        (path / slot / name).is_file() for slot in ENCODER_SLOTS for name in ("config.json", "adapter_config.json")
    ):
        return "pipeline"
    return None


def _ensure_weights(folder: _Folder) -> Path:
    path = folder.path
    if find_weights(path) is None and folder.hub is not None:
        folder.ensure(SAFETENSORS_PATTERNS)
        if find_weights(path) is None:
            folder.ensure(BIN_PATTERNS)
    entry = find_weights(path)
    if entry is None:
        raise folder.missing("model weights", ["model.safetensors", "pytorch_model.bin"])
    if entry.name.endswith(".index.json"):  # sharded: make sure every shard is here
        shards = set(json.loads(entry.read_text(encoding="utf-8")).get("weight_map", {}).values())
        if any(not (path / s).is_file() for s in shards):
            if folder.hub is not None:
                folder.ensure(sorted(shards))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise folder.missing(f"all weight shards ({len(missing)} missing)", missing[:3])
    return entry


def _plan(target: _Target, *, base_model: PathLike | torch.nn.Module | None, common: dict[str, Any],
          depth: int = 0) -> _Plan:
    if depth > _MAX_DEPTH:
        raise CheckpointMismatchError(f"{target.label}: adapters nest more than {_MAX_DEPTH} levels deep (a cycle?)")
    folder = target.folder

    if target.filename is not None:  # ------------------------------------------------ single weights file
        if folder.hub is not None:
            folder.ensure([target.filename, "config.json"])
        file = folder.path / target.filename
        if not file.is_file():
            raise folder.missing(f"file {target.filename}", [target.filename])
        plan = _Plan("file", file, target.label, target.spec)
        if base_model is not None:
            plan.base = _plan_base(base_model, common, depth, what=f"base of {target.label}")
            return plan
        if (folder.path / "config.json").is_file():
            plan.file_config = json.loads((folder.path / "config.json").read_text(encoding="utf-8"))
            return plan
        if file.suffix == ".safetensors":
            meta = read_weights_file_metadata(file)
            if "config" in meta:
                plan.file_config = json.loads(meta["config"])
                return plan
        raise CheckpointMismatchError(
            f"{target.label} is a bare weights file: it needs a config to say what model it is. Pass the base "
            "encoder it belongs to, e.g. load_robust_encoder(path, base_model='CompVis/stable-diffusion-v1-4') "
            "(a registry name, Hub repo id or local folder; with a base, the file may hold only the changed "
            "tensors), or put the matching config.json next to the file."
        )

    path = folder.path
    if not path.is_dir():
        if folder.hub is not None:
            raise folder.missing("encoder files", _METADATA[:3])
        raise EncoderNotFoundError(f"No such folder: {path}")
    kind = _layout(path)
    if kind == "full":
        _ensure_weights(folder)
        return _Plan("full", path, target.label, target.spec)
    if kind == "peft":
        if adapter_weights_file(path) is None and folder.hub is not None:
            folder.ensure([ADAPTER_SAFETENSORS])
            if adapter_weights_file(path) is None:
                folder.ensure([ADAPTER_BIN])
        if adapter_weights_file(path) is None:
            raise folder.missing("adapter weights", [ADAPTER_SAFETENSORS, ADAPTER_BIN])
        plan = _Plan("peft", path, target.label, target.spec)
        base_ref = base_model
        if base_ref is None:
            base_ref = read_adapter_config(path).get("base_model_name_or_path")
            if isinstance(base_ref, str) and folder.local is not None and not Path(base_ref).is_absolute() \
                    and (path / base_ref).exists():
                base_ref = path / base_ref  # a base stored relative to the adapter folder
        if not base_ref:
            raise CheckpointMismatchError(
                f"The adapter in {target.label} does not say which encoder it adapts (no base_model_name_or_path "
                "in adapter_config.json). Pass it: load_robust_encoder(adapter, base_model='CompVis/"
                "stable-diffusion-v1-4') — a registry name, Hub repo id, local folder or loaded model."
            )
        plan.base_ref = base_ref if isinstance(base_ref, str) else None
        plan.base = _plan_base(base_ref, common, depth, what=f"base encoder of the adapter in {target.label}")
        return plan
    if kind == "pipeline":
        slots = [s for s in ENCODER_SLOTS if _layout(path / s) in ("full", "peft")]
        if not slots and folder.hub is not None:
            raise folder.missing("text_encoder/ subfolder", [f"{s}/config.json" for s in ENCODER_SLOTS])
        if not slots:
            raise EncoderNotFoundError(f"{path} looks like a diffusers pipeline folder but has no text_encoder/")
        plan = _Plan("pipeline", path, target.label, target.spec)
        for slot in slots:
            child = _Target(folder.child(slot), None, None, f"{target.label}/{slot}")
            plan.children[slot] = _plan(child, base_model=base_model, common=common, depth=depth + 1)
        return plan
    if folder.hub is not None:
        raise folder.missing("config.json or adapter_config.json", ["config.json", "adapter_config.json"])
    contents = sorted(p.name for p in path.iterdir())[:10]
    hint = ""
    weights = [c for c in contents if c.endswith(_WEIGHT_SUFFIXES)]
    if weights:
        hint = f" To load the bare weights file, pass its path with base_model=...: {path / weights[0]}"
    raise EncoderNotFoundError(
        f"{path} is not an encoder folder: expected config.json (+ model.safetensors or pytorch_model.bin), "
        f"adapter_config.json (+ {ADAPTER_SAFETENSORS}), or text_encoder/ subfolders. It holds {contents}.{hint}"
    )


def _plan_top(target: _Target, name_or_path: PathLike, *, base_model: PathLike | torch.nn.Module | None,
              common: dict[str, Any]) -> _Plan:
    """:func:`_plan`, adding to a Hub error that a same-named local path does not exist either (a typo in a
    relative path like ``runs/my-encoder`` otherwise reads as a Hub lookup)."""
    try:
        return _plan(target, base_model=base_model, common=common)
    except EncoderNotFoundError as exc:
        if target.folder.hub is None or target.spec is not None:
            raise
        raise EncoderNotFoundError(
            f"{exc}\n(Read as a Hub repo id because no local file or folder {os.fspath(name_or_path)!r} exists "
            f"in {Path.cwd()}.)"
        ) from exc


def read_weights_file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointMismatchError(f"{path} is not a valid .safetensors file: {exc}") from exc


def _plan_base(base: PathLike | torch.nn.Module, common: dict[str, Any], depth: int, what: str
               ) -> _Plan | torch.nn.Module:
    if isinstance(base, torch.nn.Module):
        return base
    target = _resolve(base, subfolder=None, revision=None, cache_dir=common["cache_dir"],
                      local_files_only=common["local_files_only"])
    plan = _plan(target, base_model=None, common=common, depth=depth + 1)
    if plan.kind == "pipeline":
        if "text_encoder" not in plan.children:
            raise CheckpointMismatchError(f"{what}: {target.label} has no text_encoder/; pass base_model=.../text_encoder_2")
        plan = plan.children["text_encoder"]
    return plan


# ---------------------------------------------------------------------------------------------------- building
def _stored_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    for t in state.values():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _build(plan: _Plan, *, merge_adapter: bool) -> dict[str, torch.nn.Module]:
    if plan.kind == "pipeline":
        return {slot: _build(child, merge_adapter=merge_adapter)[""] for slot, child in plan.children.items()}
    if plan.kind == "full":
        config, cls_name = text_config_from_dict(json.loads((plan.path / "config.json").read_text(encoding="utf-8")))
        state = read_state_dict(plan.path)
        model = build_text_model(config, cls_name)
        model.load_state_dict(fit_state_dict(state, model, source=plan.label), strict=True)
        model._robust_encoders_stored_dtype = _stored_dtype(state)  # type: ignore[attr-defined]
        return {"": _tag(model, plan, base_models=(), families=())}
    if plan.kind == "file":
        state, _ = read_weights_file(plan.path)
        if plan.base is not None:
            model = _build_base(plan.base)
            mapped = fit_state_dict(state, model, source=plan.label, allow_missing=True)
            model.load_state_dict(mapped, strict=False)
        else:
            assert plan.file_config is not None
            config, cls_name = text_config_from_dict(plan.file_config)
            model = build_text_model(config, cls_name)
            model.load_state_dict(fit_state_dict(state, model, source=plan.label), strict=True)
        model._robust_encoders_stored_dtype = _stored_dtype(state)  # type: ignore[attr-defined]
        return {"": _tag(model, plan, *_inherited(plan.base))}
    # peft adapter
    assert plan.base is not None
    base = _build_base(plan.base)
    model = apply_adapter(base, plan.path, merge=merge_adapter, source=plan.label)
    base_models, families = _inherited(plan.base)
    if plan.base_ref and family_of_base_model(plan.base_ref):
        base_models, families = (plan.base_ref,), (str(family_of_base_model(plan.base_ref)),)
    return {"": _tag(model, plan, base_models, families)}


def _build_base(base: _Plan | torch.nn.Module) -> torch.nn.Module:
    if isinstance(base, torch.nn.Module):
        return copy.deepcopy(base)  # adapters and overlays modify their base in place
    return _build(base, merge_adapter=True)[""]


def _inherited(base: _Plan | torch.nn.Module | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    info = None
    if isinstance(base, torch.nn.Module):
        info = getattr(base, _INFO_ATTR, None)
    elif isinstance(base, _Plan) and base.spec is not None:
        info = {"base_models": base.spec.base_models, "families": base.spec.families}
    if not info:
        return (), ()
    return tuple(info.get("base_models", ())), tuple(info.get("families", ()))


def _run_metadata(path: Path) -> dict[str, Any]:
    """The ``robust_encoder.json`` a trainer run or an export keeps next to the encoder (in the folder itself, or,
    for a ``text_encoder/`` / ``text_encoder_2/`` subfolder, in its parent); ``{}`` when there is none."""
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent if folder.name in ENCODER_SLOTS else None):
        if candidate is not None and (candidate / "robust_encoder.json").is_file():
            try:
                meta = json.loads((candidate / "robust_encoder.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            return meta if isinstance(meta, dict) else {}
    return {}


def _tag(model: torch.nn.Module, plan: _Plan, base_models: tuple[str, ...], families: tuple[str, ...]
         ) -> torch.nn.Module:
    meta = _run_metadata(plan.path) if plan.spec is None else {}
    if meta.get("base_model") and meta.get("base_families"):  # what the run says it was trained on
        base_models = (str(meta["base_model"]),)
        families = tuple(str(f) for f in meta["base_families"])
    if plan.spec is not None:
        base_models, families = plan.spec.base_models, plan.spec.families
        get_base = getattr(model, "get_base_model", None)
        actual = type(get_base() if callable(get_base) else model).__name__
        if actual != plan.spec.encoder_class:
            raise CheckpointMismatchError(
                f"Registry entry {plan.spec.name!r} promises a {plan.spec.encoder_class}, but its files hold a "
                f"{actual} ({plan.path}). The entry or the files are wrong; please report it."
            )
    info = {
        "name": plan.spec.name if plan.spec is not None else None,
        "source": plan.label,
        "base_models": tuple(base_models),
        "families": tuple(families),
    }
    object.__setattr__(model, _INFO_ATTR, info)
    return model


def encoder_info(model: torch.nn.Module) -> dict[str, Any]:
    """Provenance recorded by :func:`load_robust_encoder`: ``name`` (registry name or ``None``), ``source``,
    ``base_models`` and ``families`` (empty when unknown). ``{}`` for models loaded some other way."""
    info = getattr(model, _INFO_ATTR, None)
    if info is None and hasattr(model, "get_base_model"):
        info = getattr(model.get_base_model(), _INFO_ATTR, None)
    return dict(info or {})


def _finish(model: torch.nn.Module, dtype: torch.dtype | str | None, device: str | torch.device | None
            ) -> torch.nn.Module:
    if dtype == "auto":
        dtype = getattr(model, "_robust_encoders_stored_dtype", torch.float32)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)  # type: ignore[arg-type]
    return model.eval()


def _load_components(
    name_or_path: PathLike, *, subfolder: str | None, revision: str | None, torch_dtype: Any,
    device: str | torch.device | None, cache_dir: PathLike | None, local_files_only: bool | None,
    merge_adapter: bool, base_model: PathLike | torch.nn.Module | None,
) -> tuple[dict[str, torch.nn.Module], str]:
    dtype = parse_dtype(torch_dtype)
    common = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    target = _resolve(name_or_path, subfolder=subfolder, revision=revision, **common)
    plan = _plan_top(target, name_or_path, base_model=base_model, common=common)
    built = _build(plan, merge_adapter=merge_adapter)
    for key, model in built.items():
        info = getattr(model, _INFO_ATTR, None)
        model = _finish(model, dtype, device)
        if info is not None and getattr(model, _INFO_ATTR, None) is None:
            object.__setattr__(model, _INFO_ATTR, info)
        built[key] = model
    return built, target.label


# ---------------------------------------------------------------------------------------------------- public API
def load_robust_encoder(
    name_or_path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    merge_adapter: bool = True,
    base_model: str | os.PathLike[str] | torch.nn.Module | None = None,
) -> CLIPTextModel | CLIPTextModelWithProjection | PeftModel:
    """Load a robust text encoder, in eval mode, from wherever it lives.

    Args:
        name_or_path: a registry name (``"nudity"``), a Hub repo id (``"OPTML-Group/AdvUnlearn"``, optionally with
            the subfolder appended: ``"OPTML-Group/AdvUnlearn/nudity_unlearned"``), a local ``save_pretrained``
            folder, a diffusers pipeline folder (its ``text_encoder/``), a peft LoRA adapter folder, or a single
            ``.safetensors`` / ``.bin`` weights file.
        subfolder: folder inside the repo / local folder (for a registry name: inside the entry's folder).
        revision: Hub branch, tag or commit.
        torch_dtype: ``torch.float16``, ``"bf16"``, ...; ``None`` gives float32, ``"auto"`` the stored dtype.
        device: where to put the model (default CPU).
        cache_dir: Hugging Face cache folder (default: the standard HF cache).
        local_files_only: never touch the network. ``None``: honour ``HF_HUB_OFFLINE``; when the Hub is
            unreachable the cache is used and a clear error raised within seconds if the files are not there.
        merge_adapter: merge a LoRA adapter into its base (default) or return the ``peft.PeftModel``.
        base_model: the encoder a LoRA adapter or a bare weights file belongs to (registry name, Hub id, local
            folder or a loaded model). Adapters default to their ``base_model_name_or_path``; a bare ``.safetensors``
            needs this (then it may hold only the changed tensors) unless a ``config.json`` sits next to it or the
            file's metadata holds one under ``"config"``.

    Returns:
        ``CLIPTextModel`` (``CLIPTextModelWithProjection`` for SDXL second encoders; ``PeftModel`` when
        ``merge_adapter=False``).

    Raises:
        EncoderNotFoundError: not found locally / in the cache, Hub unreachable (the message says how to fetch it).
        UnsafeCheckpointError: a ``.bin`` whose pickle holds more than tensors (never executed).
        CheckpointMismatchError: weights that do not fit their config, or an adapter that fits no module.
        ValueError: a folder with two encoders (SDXL) — pick one with ``subfolder=`` or use
            :func:`apply_robust_encoder`.

    Example:
        >>> from robust_encoders import load_robust_encoder
        >>> enc = load_robust_encoder("nudity")                       # doctest: +SKIP
        >>> enc = load_robust_encoder("OPTML-Group/AdvUnlearn/vangogh_unlearned", torch_dtype="fp16")  # doctest: +SKIP
        >>> enc = load_robust_encoder("runs/my-lora", base_model="CompVis/stable-diffusion-v1-4")     # doctest: +SKIP
    """
    built, label = _load_components(
        name_or_path, subfolder=subfolder, revision=revision, torch_dtype=torch_dtype, device=device,
        cache_dir=cache_dir, local_files_only=local_files_only, merge_adapter=merge_adapter, base_model=base_model,
    )
    if len(built) > 1:
        raise ValueError(
            f"{label} holds {len(built)} text encoders ({', '.join(built)}), as SDXL pipelines do. Pick one with "
            f"subfolder='text_encoder' or subfolder='text_encoder_2', or swap both into an SDXL pipeline with "
            f"apply_robust_encoder(pipe, {os.fspath(name_or_path)!r})."
        )
    return next(iter(built.values()))  # type: ignore[return-value]


def download_robust_encoder(
    name_or_path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    base_model: str | os.PathLike[str] | None = None,
) -> Path:
    """Fetch every file :func:`load_robust_encoder` would need (adapter bases included) into the Hugging Face
    cache, without building a model; return the local folder (or file).

    Example:
        >>> from robust_encoders.loading import download_robust_encoder
        >>> download_robust_encoder("nudity")   # doctest: +SKIP
        PosixPath('/root/.cache/huggingface/hub/models--OPTML-Group--AdvUnlearn/snapshots/<sha>/nudity_unlearned')
    """
    common = {"cache_dir": cache_dir, "local_files_only": local_files_only}
    target = _resolve(name_or_path, subfolder=subfolder, revision=revision, **common)
    return _plan_top(target, name_or_path, base_model=base_model, common=common).path
