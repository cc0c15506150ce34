"""Registry of prebuilt robust text encoders.

The registry is *data*: ``pretrained.json`` next to this module lists every entry, and this module only
validates and serves it. Importing it never imports torch, so ``robust-encoders list`` stays instant.

An entry points either at the Hugging Face Hub (``repo_id`` + optional ``subfolder`` / ``revision``) or at
files shipped inside the package (``local_path``, relative to the ``robust_encoders`` package folder).

Example:
    >>> from robust_encoders import get_pretrained, list_pretrained
    >>> [spec.name for spec in list_pretrained()][:3]
    ['nudity', 'vangogh', 'church']
    >>> spec = get_pretrained("Garbage-Truck")      # case, '-', '_' and spaces do not matter
    >>> spec.name, spec.repo_id, spec.subfolder
    ('garbage_truck', 'OPTML-Group/AdvUnlearn', 'garbage_truck_unlearned')
    >>> get_pretrained("nuditty")
    Traceback (most recent call last):
    ...
    robust_encoders.registry.UnknownEncoderError: No prebuilt robust encoder is called 'nuditty'. Did you mean 'nudity'? ...
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "BASE_MODEL_FAMILIES",
    "CONCEPT_KINDS",
    "FILE_FORMATS",
    "PACKAGE_DIR",
    "REGISTRY_FILE",
    "ConceptKind",
    "FileFormat",
    "PretrainedSpec",
    "RegistryError",
    "UnknownEncoderError",
    "family_of_base_model",
    "get_pretrained",
    "list_pretrained",
    "load_registry_file",
    "normalize_name",
    "register_pretrained",
    "unregister_pretrained",
]

PACKAGE_DIR = Path(__file__).resolve().parent
REGISTRY_FILE = PACKAGE_DIR / "pretrained.json"

ConceptKind = Literal["nudity", "style", "object", "colour"]
FileFormat = Literal["bin", "safetensors", "peft"]
CONCEPT_KINDS: tuple[str, ...] = get_args(ConceptKind)
FILE_FORMATS: tuple[str, ...] = get_args(FileFormat)
ENCODER_CLASSES: tuple[str, ...] = ("CLIPTextModel", "CLIPTextModelWithProjection")

#: Well-known base pipelines and the family of text encoder(s) they use. Every SD 1.x fine-tune shares
#: OpenAI CLIP ViT-L/14 (``sd1``), SD 2.x uses OpenCLIP ViT-H/14 (``sd2``), SDXL uses CLIP-L + OpenCLIP bigG.
BASE_MODEL_FAMILIES: Mapping[str, str] = {
    "CompVis/stable-diffusion-v1-1": "sd1",
    "CompVis/stable-diffusion-v1-2": "sd1",
    "CompVis/stable-diffusion-v1-3": "sd1",
    "CompVis/stable-diffusion-v1-4": "sd1",
    "runwayml/stable-diffusion-v1-5": "sd1",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd1",
    "runwayml/stable-diffusion-inpainting": "sd1",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "sd1",
    "stabilityai/stable-diffusion-2": "sd2",
    "stabilityai/stable-diffusion-2-base": "sd2",
    "stabilityai/stable-diffusion-2-1": "sd2",
    "stabilityai/stable-diffusion-2-1-base": "sd2",
    "stabilityai/stable-diffusion-2-inpainting": "sd2",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "stabilityai/stable-diffusion-xl-refiner-1.0": "sdxl",
    "stabilityai/sdxl-turbo": "sdxl",
}

_FAMILY_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class RegistryError(ValueError):
    """The registry data (``pretrained.json`` or a spec passed to :func:`register_pretrained`) is invalid."""


class UnknownEncoderError(KeyError):
    """No registry entry has the requested name. The message lists the closest names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def normalize_name(name: str) -> str:
    """Lookup key for a registry name: lower-case, with spaces, ``-`` and ``_`` removed.

    >>> normalize_name("Garbage-Truck") == normalize_name("garbage truck") == normalize_name("GARBAGE_TRUCK")
    True
    """
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def family_of_base_model(name_or_path: str | None) -> str | None:
    """The encoder family (``"sd1"``, ``"sd2"``, ``"sdxl"``) of a well-known base pipeline id, else ``None``.

    >>> family_of_base_model("runwayml/stable-diffusion-v1-5")
    'sd1'
    """
    if not name_or_path:
        return None
    key = str(name_or_path).strip().rstrip("/")
    lowered = {k.lower(): v for k, v in BASE_MODEL_FAMILIES.items()}
    return lowered.get(key.lower())


def _as_tuple(value: Any, field_name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        out = tuple(value)
        if not all(isinstance(v, str) and v for v in out):
            raise RegistryError(f"{field_name} must be a list of non-empty strings, got {value!r}")
        return out
    raise RegistryError(f"{field_name} must be a list of strings, got {value!r}")


@dataclass(frozen=True)
class PretrainedSpec:
    """One prebuilt robust text encoder: where its files live and what it was made for.

    Exactly one of ``repo_id`` (Hugging Face Hub) and ``local_path`` (files inside the package, relative to the
    ``robust_encoders`` package folder, or an absolute folder for user registrations) is set.

    Attributes:
        name: canonical registry name, e.g. ``"nudity"``.
        concept: the erased concept in words, e.g. ``"Van Gogh"``.
        concept_kind: ``"nudity"``, ``"style"``, ``"object"`` or ``"colour"``.
        method: the erasure method, e.g. ``"AdvUnlearn"``.
        license: SPDX-style licence id of the weights, e.g. ``"cc-by-4.0"``.
        file_format: ``"bin"`` (legacy ``pytorch_model.bin``), ``"safetensors"`` or ``"peft"`` (LoRA adapter).
        base_models: pipelines the encoder was trained against, e.g. ``("CompVis/stable-diffusion-v1-4",)``.
        families: base families it fits, e.g. ``("sd1",)`` (SD 1.x fine-tunes all share CLIP-L).
        repo_id / subfolder / revision: Hub location.
        local_path: packaged folder instead of a Hub repo.
        encoder_class: ``"CLIPTextModel"`` or ``"CLIPTextModelWithProjection"`` (SDXL second encoder).
        aliases: extra names that find this entry.

    Example:
        >>> spec = get_pretrained("nudity")
        >>> spec.location
        'OPTML-Group/AdvUnlearn/nudity_unlearned'
    """

    name: str
    concept: str
    concept_kind: ConceptKind
    method: str
    license: str
    file_format: FileFormat
    base_models: tuple[str, ...]
    families: tuple[str, ...]
    repo_id: str | None = None
    subfolder: str | None = None
    revision: str | None = None
    local_path: str | None = None
    encoder_class: str = "CLIPTextModel"
    description: str = ""
    url: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for attr in ("base_models", "families", "aliases"):
            object.__setattr__(self, attr, _as_tuple(getattr(self, attr), attr))
        where = f"registry entry {self.name!r}"
        if not isinstance(self.name, str) or not normalize_name(self.name):
            raise RegistryError(f"registry entry has an empty or invalid name: {self.name!r}")
        for attr in ("concept", "method", "license"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise RegistryError(f"{where}: '{attr}' must be a non-empty string")
        if self.concept_kind not in CONCEPT_KINDS:
            raise RegistryError(f"{where}: concept_kind {self.concept_kind!r} is not one of {list(CONCEPT_KINDS)}")
        if self.file_format not in FILE_FORMATS:
            raise RegistryError(f"{where}: file_format {self.file_format!r} is not one of {list(FILE_FORMATS)}")
        if self.encoder_class not in ENCODER_CLASSES:
            raise RegistryError(f"{where}: encoder_class {self.encoder_class!r} is not one of {list(ENCODER_CLASSES)}")
        if not self.families:
            raise RegistryError(f"{where}: 'families' must list at least one base family, e.g. ['sd1']")
        for fam in self.families:
            if not _FAMILY_RE.match(fam):
                raise RegistryError(f"{where}: family {fam!r} must be a lower-case id such as 'sd1', 'sd2', 'sdxl'")
        if (self.repo_id is None) == (self.local_path is None):
            raise RegistryError(
                f"{where}: set exactly one of 'repo_id' (a Hugging Face Hub repo) and 'local_path' "
                "(a folder shipped inside the package)"
            )
        if self.repo_id is not None and not _REPO_ID_RE.match(self.repo_id):
            raise RegistryError(f"{where}: repo_id {self.repo_id!r} is not of the form 'org/name'")
        if self.local_path is not None and (self.subfolder or self.revision):
            raise RegistryError(f"{where}: 'subfolder' and 'revision' only apply to Hub entries (repo_id)")

    # ------------------------------------------------------------------ derived views
    @property
    def source(self) -> Literal["hub", "package"]:
        """``"hub"`` for Hub entries, ``"package"`` for files shipped with (or registered into) the package."""
        return "hub" if self.repo_id is not None else "package"

    @property
    def location(self) -> str:
        """Where the files live, in one string: ``org/repo/subfolder`` or ``package:<local_path>``."""
        if self.repo_id is not None:
            return f"{self.repo_id}/{self.subfolder}" if self.subfolder else self.repo_id
        return f"package:{self.local_path}"

    def resolve_local_path(self) -> Path | None:
        """Absolute folder of a packaged entry (``local_path`` is relative to the package folder), else ``None``."""
        if self.local_path is None:
            return None
        path = Path(self.local_path).expanduser()
        return path if path.is_absolute() else PACKAGE_DIR / path

    def download_command(self) -> str | None:
        """The ``hf download`` command that pre-fetches a Hub entry into the local cache."""
        if self.repo_id is None:
            return None
        cmd = f"hf download {self.repo_id}"
        if self.subfolder:
            cmd += f' --include "{self.subfolder}/*"'
        if self.revision:
            cmd += f" --revision {self.revision}"
        return cmd

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists), the inverse of :meth:`from_dict`."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainedSpec:
        """Build a spec from a registry-file entry, rejecting unknown keys (typo protection)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RegistryError(
                f"registry entry {data.get('name')!r} has unknown field(s) {unknown}; allowed: {sorted(known)}"
            )
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
        missing = [k for k in required if k not in data]
        if missing:
            raise RegistryError(f"registry entry {data.get('name')!r} is missing field(s) {missing}")
        return cls(**dict(data))


def load_registry_file(path: str | Path) -> list[PretrainedSpec]:
    """Read and validate a registry JSON file (``{"schema_version": 1, "encoders": [...]}``).

    Packaged ``local_path`` entries must stay inside the package folder.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read registry file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema_version") != 1 or not isinstance(data.get("encoders"), list):
        raise RegistryError(f"{path}: expected an object with schema_version 1 and an 'encoders' list")
    specs = [PretrainedSpec.from_dict(entry) for entry in data["encoders"]]
    for spec in specs:
        if spec.local_path is not None:
            rel = Path(spec.local_path)
            if rel.is_absolute() or ".." in rel.parts:
                raise RegistryError(
                    f"{path}: entry {spec.name!r}: local_path must be relative to the package folder "
                    f"and stay inside it, got {spec.local_path!r}"
                )
    _index(specs)  # raises on duplicate names
    return specs


def _keys(spec: PretrainedSpec) -> list[str]:
    return [normalize_name(spec.name), *(normalize_name(a) for a in spec.aliases)]


def _index(specs: Iterable[PretrainedSpec]) -> dict[str, PretrainedSpec]:
    index: dict[str, PretrainedSpec] = {}
    for spec in specs:
        for key in _keys(spec):
            if key in index and index[key].name != spec.name:
                raise RegistryError(
                    f"registry names collide: {spec.name!r} and {index[key].name!r} both normalise to {key!r}"
                )
            index[key] = spec
    return index


_lock = threading.Lock()
_specs: list[PretrainedSpec] | None = None


def _registry() -> list[PretrainedSpec]:
    global _specs
    with _lock:
        if _specs is None:
            _specs = load_registry_file(REGISTRY_FILE)
        return _specs


def list_pretrained(*, concept_kind: str | None = None, family: str | None = None) -> list[PretrainedSpec]:
    """All registered encoders in registry order, optionally filtered by concept kind and/or base family.

    >>> [s.name for s in list_pretrained(concept_kind="style")]
    ['vangogh', 'miniature/stripes']
    """
    specs = list(_registry())
    if concept_kind is not None:
        if concept_kind not in CONCEPT_KINDS:
            raise ValueError(f"concept_kind must be one of {list(CONCEPT_KINDS)}, got {concept_kind!r}")
        specs = [s for s in specs if s.concept_kind == concept_kind]
    if family is not None:
        specs = [s for s in specs if family in s.families]
    return specs


def _closest(name: str, specs: list[PretrainedSpec], n: int = 3) -> list[str]:
    """Canonical names closest to ``name`` (matched on normalised names and aliases)."""
    by_key = {}
    for spec in specs:
        for key in _keys(spec):
            by_key.setdefault(key, spec.name)
    key = normalize_name(name)
    matches = difflib.get_close_matches(key, list(by_key), n=n * 2, cutoff=0.5)
    # Substring hits ("truck" -> "garbage_truck") are as useful as edit-distance hits.
    matches += [k for k in by_key if key and (key in k or k in key) and k not in matches]
    out: list[str] = []
    for match in matches:
        canonical = by_key[match]
        if canonical not in out:
            out.append(canonical)
    return out[:n]


def get_pretrained(name: str) -> PretrainedSpec:
    """The registry entry called ``name`` (case, spaces, ``-`` and ``_`` are ignored; aliases work).

    Raises:
        UnknownEncoderError: (a ``KeyError``) naming the closest registered names.

    >>> get_pretrained("Van Gogh").name
    'vangogh'
    """
    specs = _registry()
    spec = _index(specs).get(normalize_name(name))
    if spec is not None:
        return spec
    close = _closest(name, specs)
    if close:
        hint = "Did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "Known names: " + ", ".join(repr(s.name) for s in specs) + "."
    raise UnknownEncoderError(
        f"No prebuilt robust encoder is called {name!r}. {hint} "
        "Run `robust-encoders list` to see them all; a Hub repo id ('org/repo[/subfolder]') or a local "
        "path also works wherever a name does."
    )


def register_pretrained(spec: PretrainedSpec | Mapping[str, Any], *, overwrite: bool = False) -> PretrainedSpec:
    """Add an entry to this process's registry (e.g. your own encoders); returns the validated spec.

    Example:
        >>> spec = register_pretrained({
        ...     "name": "my-church", "local_path": "/data/encoders/church", "concept": "church",
        ...     "concept_kind": "object", "method": "AdvUnlearn", "license": "cc-by-4.0",
        ...     "file_format": "safetensors", "base_models": ["CompVis/stable-diffusion-v1-4"],
        ...     "families": ["sd1"]})
        >>> get_pretrained("my_church") is spec
        True
        >>> unregister_pretrained("my-church")
    """
    if not isinstance(spec, PretrainedSpec):
        spec = PretrainedSpec.from_dict(spec)
    global _specs
    current = _registry()
    with _lock:
        clashing = {s.name for s in current for k in _keys(s) if k in set(_keys(spec))}
        if clashing and not overwrite:
            raise RegistryError(
                f"cannot register {spec.name!r}: it clashes with existing entr{'y' if len(clashing) == 1 else 'ies'} "
                f"{sorted(clashing)}; pass overwrite=True to replace"
            )
        new = [s for s in current if s.name not in clashing] + [spec]
        _index(new)
        _specs = new
    return spec


def unregister_pretrained(name: str) -> None:
    """Remove an entry (by any of its names) from this process's registry."""
    spec = get_pretrained(name)
    global _specs
    with _lock:
        assert _specs is not None
        _specs = [s for s in _specs if s.name != spec.name]
