"""Model cards for exported robust encoders: measured robustness in the metadata and in prose.

The card is rendered from the Jinja template ``templates/robust_encoder_card.md`` (also visible at the repo root
as ``model_cards/robust_encoder_card.md``) through :meth:`huggingface_hub.ModelCard.from_template`, with a
:class:`~huggingface_hub.ModelCardData` whose ``eval_results`` become the card's ``model-index`` — so the Hub
shows the numbers, and tools can read them back with ``ModelCard.load(...).data.eval_results``.

Generated prose sits between two HTML comments (:data:`GENERATED_START` / :data:`GENERATED_END`). When a card
already exists, :func:`merge_model_card` replaces only that block and merges the metadata, so text a user wrote
outside the block survives every re-export.

Example:
    >>> from robust_encoders.hub.card import EvaluationResult
    >>> ev = EvaluationResult.from_dict({"concept": "church", "asr": {"UnlearnDiffAtk": 0.12}, "pre_asr": 0.02})
    >>> [(r.metric_name, r.metric_value) for r in ev.eval_results()][:2]
    [('Pre-ASR (no attack)', 0.02), ('ASR (UnlearnDiffAtk)', 0.12)]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ExportError

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = [
    "DATASET_PREFIX",
    "GENERATED_END",
    "GENERATED_START",
    "TEMPLATE_NAME",
    "OWNED_KEYS",
    "EvaluationResult",
    "hub_ids",
    "merge_model_card",
    "render_model_card",
    "split_front_matter",
    "template_path",
]

TEMPLATE_NAME = "robust_encoder_card.md"
GENERATED_START = "<!-- robust-encoders:generated:start -->"
GENERATED_END = "<!-- robust-encoders:generated:end -->"
#: Prefix of the ``dataset_type`` of every model-index entry this package writes (how a merge recognises them).
DATASET_PREFIX = "robust-encoders"
TASK_TYPE = "text-to-image"

_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n([\s\S]*?)\r?\n---[ \t]*(?:\r?\n|\Z)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def template_path() -> Path:
    """The packaged Jinja template of the model card.

    Raises:
        ExportError: the template is not installed (a packaging problem: ``hub/templates/*.md`` must be package
            data).
    """
    path = Path(str(resources.files("robust_encoders.hub") / "templates" / TEMPLATE_NAME))
    if not path.is_file():
        raise ExportError(
            f"the model-card template {path} is missing from this installation: robust_encoders/hub/templates/"
            "*.md must be installed as package data. Reinstall robust-encoders, or install it from a source "
            "checkout with `pip install -e .`."
        )
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "concept"


def _rate(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ExportError(f"{source}: {what} must be a number, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        hint = " (it looks like a percentage: rates are fractions, e.g. 0.12 for 12%)" if 1 < value <= 100 else ""
        raise ExportError(f"{source}: {what} must be a rate in [0, 1], got {value!r}{hint}")
    return float(value)


def _number(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ExportError(f"{source}: {what} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class EvaluationResult:
    """One evaluation-suite result (``eval/results.json``), validated.

    Rates (``pre_asr``, every ``asr`` value, ``retain_accuracy``) are fractions in [0, 1]; ``clip_score`` and
    ``fid`` are plain numbers. Anything except ``concept`` and ``asr`` may be missing (``None``).
    """

    concept: str
    asr: dict[str, float]
    concept_kind: str | None = None
    encoder: str | None = None
    detector: str | None = None
    n_prompts: int | None = None
    seed: int | None = None
    pre_asr: float | None = None
    retain_accuracy: float | None = None
    clip_score: float | None = None
    fid: float | None = None
    timing_s: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "evaluation results") -> EvaluationResult:
        """Validate a results dict; raises :class:`ExportError` naming the offending field."""
        if not isinstance(data, Mapping):
            raise ExportError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if not isinstance(data.get("concept"), str) or not data["concept"]:
            raise ExportError(f"{source}: 'concept' (the erased concept) is missing")
        asr = data.get("asr")
        if not isinstance(asr, Mapping) or not asr:
            raise ExportError(
                f"{source}: 'asr' must map each attack name to its attack success rate, e.g. "
                "{\"UnlearnDiffAtk\": 0.12}; got " + repr(asr)
            )
        out_asr = {str(k): _rate(v, f"asr[{k!r}]", source) for k, v in asr.items()}
        opt_rate = {k: _rate(data[k], k, source) if data.get(k) is not None else None
                    for k in ("pre_asr", "retain_accuracy")}
        opt_num = {k: _number(data[k], k, source) if data.get(k) is not None else None for k in ("clip_score", "fid")}
        for key in ("n_prompts", "seed"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ExportError(f"{source}: {key} must be an integer, got {value!r}")
        for key in ("timing_s", "config"):
            if data.get(key) is not None and not isinstance(data[key], Mapping):
                raise ExportError(f"{source}: {key} must be an object, got {type(data[key]).__name__}")
        return cls(
            concept=data["concept"], asr=out_asr, concept_kind=data.get("concept_kind"), encoder=data.get("encoder"),
            detector=data.get("detector"), n_prompts=data.get("n_prompts"), seed=data.get("seed"),
            timing_s=dict(data.get("timing_s") or {}), config=dict(data.get("config") or {}), **opt_rate, **opt_num,
        )

    def to_dict(self) -> dict[str, Any]:
        """The results in the evaluation suite's JSON shape."""
        return {
            "concept": self.concept, "concept_kind": self.concept_kind, "encoder": self.encoder,
            "detector": self.detector, "n_prompts": self.n_prompts, "seed": self.seed, "pre_asr": self.pre_asr,
            "asr": dict(self.asr), "retain_accuracy": self.retain_accuracy, "clip_score": self.clip_score,
            "fid": self.fid, "timing_s": dict(self.timing_s), "config": dict(self.config),
        }

    def rows(self) -> list[dict[str, str]]:
        """Card-table rows: metric name, formatted value, and which direction is better."""
        rows = []
        if self.pre_asr is not None:
            rows.append({"name": "Pre-ASR (no attack)", "value": f"{100 * self.pre_asr:.1f}%", "better": "↓"})
        for attack, value in self.asr.items():
            rows.append({"name": f"ASR — {attack}", "value": f"{100 * value:.1f}%", "better": "↓"})
        if self.retain_accuracy is not None:
            rows.append({"name": "Retain accuracy", "value": f"{100 * self.retain_accuracy:.1f}%", "better": "↑"})
        if self.clip_score is not None:
            rows.append({"name": "CLIP score", "value": f"{self.clip_score:.4g}", "better": "↑"})
        if self.fid is not None:
            rows.append({"name": "FID-style distance", "value": f"{self.fid:.4g}", "better": "↓"})
        return rows

    def eval_results(self, *, task_prefix: str = DATASET_PREFIX) -> list[EvalResult]:
        """``huggingface_hub.EvalResult`` entries (the card's ``model-index``), values as in the JSON (rates in
        [0, 1]). Concept-prompt metrics and retain metrics are two "datasets"; the detector is their config."""
        from huggingface_hub import EvalResult

        common = {"task_type": TASK_TYPE, "task_name": "Concept erasure (text-to-image)",
                  "dataset_config": self.detector}
        args = {k: v for k, v in (("n_prompts", self.n_prompts), ("seed", self.seed)) if v is not None} or None
        erased = {**common, "dataset_type": f"{task_prefix}/{_slug(self.concept)}-prompts",
                  "dataset_name": f"{self.concept} prompts", "dataset_args": args}
        retain = {**common, "dataset_type": f"{task_prefix}/retain-prompts",
                  "dataset_name": "retain prompts (other concepts)", "dataset_args": args}
        out = []
        if self.pre_asr is not None:
            out.append(EvalResult(**erased, metric_type="attack_success_rate", metric_name="Pre-ASR (no attack)",
                                  metric_value=round(self.pre_asr, 4), metric_config="no_attack"))
        for attack, value in self.asr.items():
            out.append(EvalResult(**erased, metric_type="attack_success_rate", metric_name=f"ASR ({attack})",
                                  metric_value=round(value, 4), metric_config=attack))
        if self.retain_accuracy is not None:
            out.append(EvalResult(**retain, metric_type="accuracy", metric_name="Retain accuracy",
                                  metric_value=round(self.retain_accuracy, 4)))
        if self.clip_score is not None:
            out.append(EvalResult(**retain, metric_type="clip_score", metric_name="CLIP score",
                                  metric_value=round(self.clip_score, 4)))
        if self.fid is not None:
            out.append(EvalResult(**retain, metric_type="fid", metric_name="FID-style distance",
                                  metric_value=round(self.fid, 4)))
        return out


# ------------------------------------------------------------------------------------------------ rendering
def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """``(metadata, body)`` of a markdown card; ``({}, text)`` when it has no YAML front matter.

    Raises:
        ExportError: the front matter is not valid YAML or not a mapping.
    """
    import yaml

    match = _FRONT_MATTER.match(text)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise ExportError(f"the README's YAML metadata block is not valid YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise ExportError(f"the README's YAML metadata must be a mapping, got {type(meta).__name__}")
    return meta, text[match.end():]


def hub_ids(names: Sequence[str]) -> list[str]:
    """The entries of ``names`` that are Hub repo ids (``org/name``), not local paths or bare names."""
    return [n for n in names if isinstance(n, str) and _HUB_ID.match(n) and not Path(n).is_absolute()]


def render_model_card(card_data: ModelCardData, template_kwargs: Mapping[str, Any]) -> ModelCard:
    """Render the packaged template with ``card_data`` (front matter) and ``template_kwargs`` (prose)."""
    from huggingface_hub import ModelCard

    card = ModelCard.from_template(card_data, template_path=str(template_path()), **dict(template_kwargs))
    if GENERATED_START not in card.text or GENERATED_END not in card.text:  # pragma: no cover - template bug
        raise ExportError("the model-card template lost its generated-block markers")
    return card


#: Metadata keys that describe measured or derived facts: a re-export's value replaces the old one.
OWNED_KEYS = ("base_model", "base_model_relation", "library_name", "pipeline_tag", "model-index")


def merge_model_card(existing: str, new: ModelCard) -> ModelCard:
    """Merge a freshly rendered card into an existing README text, keeping the user's work.

    * Metadata: keys in :data:`OWNED_KEYS` come from the new card; ``tags`` are the union (existing first);
      every other key (``license``, ``language``, a user's own keys) keeps the existing value if it has one.
      ``model-index`` entries written by robust-encoders (``dataset_type`` ``robust-encoders/...``) are
      replaced; entries from other sources are kept.
    * Body: if the existing card has the generated block, only that block is replaced; text before and after it
      is kept verbatim. A hand-written README without the block is kept entirely, after the new block.

    Raises:
        ExportError: the existing README's metadata is not valid YAML (fix it, or move the file away).
    """
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    old_meta, old_body = split_front_matter(existing)
    new_meta, new_body = split_front_matter(str(new))
    start, end = new_body.index(GENERATED_START), new_body.index(GENERATED_END) + len(GENERATED_END)
    block = new_body[start:end]

    merged: dict[str, Any] = {k: v for k, v in old_meta.items() if k not in OWNED_KEYS}
    for key, value in new_meta.items():
        if key == "tags":
            old_tags = list(old_meta.get("tags") or [])
            merged["tags"] = old_tags + [t for t in value if t not in old_tags]
        elif key in OWNED_KEYS or key not in merged:
            merged[key] = value

    evals, model_name = list(new.data.eval_results or []), new.data.model_name
    if old_meta.get("model-index"):
        try:
            old_name, old_evals = model_index_to_eval_results(old_meta["model-index"])
        except Exception as exc:
            raise ExportError(f"the README's model-index is malformed, so it cannot be merged: {exc}") from exc
        kept = [e for e in old_evals if not str(e.dataset_type).startswith(DATASET_PREFIX + "/")]
        evals = kept + evals
        model_name = model_name or old_name
    merged.pop("model-index", None)
    data = ModelCardData(**merged, eval_results=evals or None, model_name=model_name if evals else None)

    s, e = old_body.find(GENERATED_START), old_body.find(GENERATED_END)
    if s != -1 and e != -1 and e > s:
        body = old_body[:s] + block + old_body[e + len(GENERATED_END):]
    else:
        user = old_body.strip("\n")
        body = "\n" + block + ("\n\n" + user + "\n" if user else "\n")
    body = "\n" + body.lstrip("\n")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
