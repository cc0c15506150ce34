"""Turn a trainer run folder into a Hub-ready model folder with a model card that carries measured robustness.

Input (the trainer's ``RUN_DIR``)::

    RUN_DIR/
      config.yaml            the resolved recipe
      robust_encoder.json    {"concept", "concept_kind", "method", "base_model", "base_families", "trainable",
                              "recipe", "format": "full" | "lora", "encoders": [...], "train_time_s", "iterations"}
      text_encoder/          CLIPTextModel save_pretrained folder, or a peft adapter folder
      text_encoder_2/        (SDXL only)
      eval/results.json      (optional) evaluation-suite results

Output (``out_dir``)::

    config.json + model.safetensors                 full encoder          (one encoder: at the top level)
    adapter_config.json + adapter_model.safetensors LoRA, with its base   (SDXL: text_encoder/ + text_encoder_2/)
    robust_encoder.json                             run metadata + layout + measured metrics
    README.md                                       model card (template: templates/robust_encoder_card.md)

The folder is built in a temporary sibling directory and renamed into place, so ``out_dir`` is either the old
export or the complete new one, never half of each. An existing ``README.md`` is merged, not replaced: see
:func:`robust_encoders.hub.card.merge_model_card`.

Example:
    >>> from robust_encoders.hub import export_run
    >>> export_run("runs/church-advunlearn", "exports/church", repo_id="me/church-robust")  # doctest: +SKIP
    PosixPath('exports/church')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .card import EvaluationResult, hub_ids, merge_model_card, render_model_card
from .errors import ExportError, ExportExistsError

__all__ = ["ENCODER_SLOTS", "EvalResultsInput", "export_run", "read_run_metadata"]

logger = logging.getLogger(__name__)

ENCODER_SLOTS = ("text_encoder", "text_encoder_2")
RUN_METADATA = "robust_encoder.json"
REQUIRED_RUN_KEYS = ("concept", "concept_kind", "method", "base_model", "format", "encoders")
EvalResultsInput = str | os.PathLike | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


# ------------------------------------------------------------------------------------------------ reading a run
def read_run_metadata(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN_DIR/robust_encoder.json``, checked against the trainer contract.

    Raises:
        ExportError: the file is missing or invalid, or names encoders whose folders are absent.
    """
    run = Path(run_dir)
    path = run / RUN_METADATA
    if not run.is_dir():
        raise ExportError(f"{run} is not a folder. Pass the run folder the trainer wrote (it holds {RUN_METADATA}).")
    if not path.is_file():
        raise ExportError(
            f"{run} is not a trainer run folder: {RUN_METADATA} is missing. Expected config.yaml, {RUN_METADATA} "
            "and text_encoder/ (written by `robust-encoders train`)."
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ExportError(f"{path} must hold a JSON object")
    missing = [k for k in REQUIRED_RUN_KEYS if meta.get(k) in (None, "", [])]
    if missing:
        raise ExportError(f"{path} lacks {missing}; the trainer writes {list(REQUIRED_RUN_KEYS)}")
    if meta["format"] not in ("full", "lora"):
        raise ExportError(f"{path}: format must be 'full' or 'lora', got {meta['format']!r}")
    encoders = meta["encoders"]
    if (not isinstance(encoders, list) or len(set(encoders)) != len(encoders)
            or any(e not in ENCODER_SLOTS for e in encoders)):
        raise ExportError(f"{path}: encoders must be a list drawn from {list(ENCODER_SLOTS)}, got {encoders!r}")
    for slot in encoders:
        if not (run / slot).is_dir():
            raise ExportError(f"{path} lists encoder {slot!r}, but {run / slot} does not exist")
    return meta


def _load_evaluations(eval_results: EvalResultsInput, run: Path, concept: str) -> list[EvaluationResult]:
    from ..registry import normalize_name

    source = "eval_results"
    if eval_results is None:
        default = run / "eval" / "results.json"
        if not default.is_file():
            return []
        eval_results = default
    if isinstance(eval_results, (str, os.PathLike)):
        path = Path(eval_results)
        source = str(path)
        try:
            eval_results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read evaluation results {path}: {exc}") from exc
    items = [eval_results] if isinstance(eval_results, Mapping) else list(eval_results)  # type: ignore[arg-type]
    out = []
    for i, item in enumerate(items):
        where = source if len(items) == 1 else f"{source}[{i}]"
        ev = EvaluationResult.from_dict(item, source=where)
        if normalize_name(ev.concept) != normalize_name(concept):
            raise ExportError(
                f"{where} evaluates concept {ev.concept!r}, but this run erased {concept!r}: wrong results file?"
            )
        out.append(ev)
    return out


def _read_recipe(run: Path) -> tuple[str, Any]:
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise ExportError(
            f"{path} (the resolved training recipe) is missing; the model card must say how the encoder was made. "
            "Re-run the export on the complete run folder the trainer wrote."
        )
    text = path.read_text(encoding="utf-8").strip()
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExportError(f"{path} is not valid YAML: {exc}") from exc


# ------------------------------------------------------------------------------------------------ encoder files
def _is_local_path(ref: str) -> bool:
    return Path(ref).expanduser().is_absolute() or ref.startswith((".", "~")) or Path(ref).exists()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            next(iter(f.keys()), None)
    except Exception as exc:
        raise ExportError(f"{path} is not a readable .safetensors file: {exc}") from exc


def _pickle_to_safetensors(src: Path, dst: Path) -> None:
    """Re-save a legacy pickle (read with ``weights_only=True`` only) as safetensors."""
    from safetensors.torch import save_file

    from ..loading.checkpoint import safe_torch_load

    tensors = {k: v.contiguous() for k, v in safe_torch_load(src).items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})


def _export_full(src: Path, dst: Path) -> list[dict[str, str]]:
    from .convert import convert_legacy_bin

    config = src / "config.json"
    if not config.is_file():
        raise ExportError(f"{src} has no config.json: the run says format 'full' (a save_pretrained folder)")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type not in (None, "clip_text_model"):
        raise ExportError(f"{config} describes a {model_type!r} model, not a CLIP text encoder (clip_text_model)")
    dst.mkdir(parents=True, exist_ok=True)
    if (src / "model.safetensors").is_file():
        shutil.copy2(config, dst / "config.json")
        shutil.copy2(src / "model.safetensors", dst / "model.safetensors")
        _check_safetensors(dst / "model.safetensors")
        weights = ["model.safetensors"]
    elif (src / "model.safetensors.index.json").is_file():
        shutil.copy2(config, dst / "config.json")
        index = json.loads((src / "model.safetensors.index.json").read_text(encoding="utf-8"))
        shards = sorted(set(index.get("weight_map", {}).values()))
        for shard in shards:
            if not (src / shard).is_file():
                raise ExportError(f"{src}/model.safetensors.index.json lists {shard}, which is missing")
            shutil.copy2(src / shard, dst / shard)
            _check_safetensors(dst / shard)
        shutil.copy2(src / "model.safetensors.index.json", dst / "model.safetensors.index.json")
        weights = ["model.safetensors.index.json", *shards]
    elif (src / "pytorch_model.bin").is_file():
        tmp = dst.parent / f".{dst.name}.convert-{uuid.uuid4().hex[:8]}"
        convert_legacy_bin(src / "pytorch_model.bin", tmp, config=config)
        for item in tmp.iterdir():
            os.replace(item, dst / item.name)
        tmp.rmdir()
        weights = ["model.safetensors"]
    else:
        raise ExportError(f"{src} has config.json but no model.safetensors (or pytorch_model.bin) next to it")
    return [{"name": "config.json", "what": "CLIPTextConfig"}] + [
        {"name": w, "what": "encoder weights (safetensors)" if w.endswith(".safetensors") else "shard index"}
        for w in weights
    ]


def _export_lora(src: Path, dst: Path, slot: str, base_model: str) -> tuple[list[dict[str, str]], str]:
    cfg_path = src / "adapter_config.json"
    if not cfg_path.is_file():
        raise ExportError(f"{src} has no adapter_config.json: the run says format 'lora' (a peft adapter folder)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    ref = cfg.get("base_model_name_or_path") or ""
    base_is_hub = bool(hub_ids([base_model]))
    if base_is_hub and (not ref or ref == base_model or _is_local_path(ref)):
        # A path on the training machine means nothing elsewhere, and a bare pipeline id does not say which of
        # its encoders was adapted: point at the base pipeline's encoder folder.
        ref = f"{base_model}/{slot}"
    elif not ref:
        ref = base_model
    if _is_local_path(ref):
        logger.warning(
            "The LoRA adapter in %s refers to its base encoder by the local path %s, which will not exist on other "
            "machines; loaders there must pass base_model=... .", src, ref,
        )
    cfg["base_model_name_or_path"] = ref
    dst.mkdir(parents=True, exist_ok=True)
    _write_json(dst / "adapter_config.json", cfg)
    if (src / "adapter_model.safetensors").is_file():
        shutil.copy2(src / "adapter_model.safetensors", dst / "adapter_model.safetensors")
        _check_safetensors(dst / "adapter_model.safetensors")
    elif (src / "adapter_model.bin").is_file():
        _pickle_to_safetensors(src / "adapter_model.bin", dst / "adapter_model.safetensors")
    else:
        raise ExportError(f"{src} has adapter_config.json but no adapter_model.safetensors (or .bin)")
    files = [{"name": "adapter_config.json", "what": f"peft LoRA config; base encoder `{ref}`"},
             {"name": "adapter_model.safetensors", "what": "LoRA weights (safetensors)"}]
    return files, ref


# ------------------------------------------------------------------------------------------------ the card
def _snippet(load_ref: str, meta: Mapping[str, Any], slots: list[str]) -> str:
    base = meta["base_model"]
    prompt = f"a picture of {meta['concept']}"
    lines = ["from diffusers import DiffusionPipeline",
             "from robust_encoders import apply_robust_encoder, load_robust_encoder", "",
             f'pipe = DiffusionPipeline.from_pretrained("{base}")']
    if slots == ["text_encoder"]:
        lines.append(f'pipe.text_encoder = load_robust_encoder("{load_ref}")')
    else:
        for slot in slots:
            lines.append(f'pipe.{slot} = load_robust_encoder("{load_ref}", subfolder="{slot}")')
    lines += [f"# or in one call that checks compatibility first: pipe = apply_robust_encoder(pipe, \"{load_ref}\")",
              f'image = pipe("{prompt}").images[0]   # the concept no longer appears']
    return "\n".join(lines)


def _plain_snippet(load_ref: str, meta: Mapping[str, Any], slots: list[str], bases: dict[str, str]
                   ) -> tuple[str | None, str | None]:
    classes = {"text_encoder": "CLIPTextModel", "text_encoder_2": "CLIPTextModelWithProjection"}
    sub = (lambda s: "") if slots == ["text_encoder"] else (lambda s: f', subfolder="{s}"')
    if meta["format"] == "full":
        imports = sorted({classes[s] for s in slots})
        lines = [f"from transformers import {', '.join(imports)}", ""]
        lines += [f'pipe.{s} = {classes[s]}.from_pretrained("{load_ref}"{sub(s)})' for s in slots]
        return "\n".join(lines), "transformers"
    if not all(hub_ids([bases[s].rsplit("/", 1)[0]]) and bases[s].count("/") == 2 for s in slots):
        return None, None
    imports = sorted({classes[s] for s in slots})
    lines = ["from peft import PeftModel", f"from transformers import {', '.join(imports)}", ""]
    for s in slots:
        repo, folder = bases[s].rsplit("/", 1)
        lines.append(f'base = {classes[s]}.from_pretrained("{repo}", subfolder="{folder}")')
        lines.append(f'pipe.{s} = PeftModel.from_pretrained(base, "{load_ref}"{sub(s)}).merge_and_unload()')
    return "\n".join(lines), "transformers + peft"


def _trainable_text(trainable: Any, lora: bool) -> str:
    """What was trained, in words (from robust_encoder.json's ``trainable``)."""
    if isinstance(trainable, Mapping):
        part = trainable.get("part")
        if part == "all":
            return "all weights"
        if part == "lora" or lora:
            settings = trainable.get("lora") or {}
            targets = ", ".join(settings.get("targets") or []) or "its target modules"
            return f"a LoRA adapter (rank {settings.get('rank', '?')} on {targets})"
        named = {"first_k": f"the first {trainable.get('layers', 'k')} transformer layers",
                 "attention": "the attention layers", "mlp": "the MLP layers"}
        if part in named:
            return named[part]
        return ", ".join(f"{k}={v}" for k, v in trainable.items())
    if isinstance(trainable, str) and trainable:
        return trainable
    return "a LoRA adapter" if lora else "all weights"


def _card(meta: Mapping[str, Any], evaluations: list[EvaluationResult], *, recipe_text: str, repo_id: str | None,
          out_name: str, license: str, slots: list[str], files: list[dict[str, str]], bases: dict[str, str]):
    import yaml
    from huggingface_hub import ModelCardData

    from .. import __version__

    lora = meta["format"] == "lora"
    base_models = [meta["base_model"]]
    method, concept, kind = str(meta["method"]), str(meta["concept"]), str(meta["concept_kind"])
    slug = "-".join(w for w in "".join(c if c.isalnum() else " " for c in concept.lower()).split())
    model_name = repo_id.split("/")[1] if repo_id else f"{method}-{slug}".lower()
    evals = [r for ev in evaluations for r in ev.eval_results()]
    tags = ["robust-encoders", "concept-erasure", "machine-unlearning", "adversarial-robustness",
            "stable-diffusion", "text-to-image", "clip", "text-encoder", method.lower(), f"erased-{kind}"]
    if lora:
        tags.append("lora")
    data = ModelCardData(
        license=license,
        base_model=hub_ids(base_models) or None,
        base_model_relation="adapter" if lora else "finetune",
        library_name="peft" if lora else "transformers",
        pipeline_tag="feature-extraction",
        tags=list(dict.fromkeys(tags)),
        eval_results=evals or None,
        model_name=model_name if evals else None,
    )
    load_ref = repo_id or f"path/to/{out_name}"
    plain, plain_library = _plain_snippet(load_ref, meta, slots, bases)
    trainable_text = _trainable_text(meta.get("trainable"), lora)
    train_time = meta.get("train_time_s")
    families = meta.get("base_families") or []
    kwargs = {
        "title": f"{method} robust text encoder — {concept} erased",
        "method": method, "concept": concept, "concept_kind": kind,
        "recipe_name": meta.get("recipe") if isinstance(meta.get("recipe"), str) else None,
        "families_text": ", ".join(families) if families else "the base model's family",
        "base_models": base_models,
        "format_text": ("LoRA adapter (peft, safetensors) on " + ", ".join(f"`{bases[s]}`" for s in slots)) if lora
        else "full CLIP text encoder (transformers, safetensors)",
        "trainable_text": trainable_text,
        "iterations": meta.get("iterations"),
        "train_time_text": f"{train_time / 3600:.2f} h" if isinstance(train_time, (int, float)) and train_time >= 3600
        else (f"{train_time:.0f} s" if isinstance(train_time, (int, float)) else None),
        "evaluations": [
            {"detector": ev.detector, "seed": ev.seed, "rows": ev.rows(),
             "n_prompts_text": str(ev.n_prompts) if ev.n_prompts is not None else "the",
             "config_yaml": yaml.safe_dump(ev.config, sort_keys=False).strip() if ev.config else ""}
            for ev in evaluations
        ],
        "snippet": _snippet(load_ref, meta, slots),
        "plain_snippet": plain, "plain_library": plain_library,
        "recipe_yaml": recipe_text,
        "files": files + [{"path": "robust_encoder.json", "what": "run metadata, file layout and measured metrics"}],
        "library_version": __version__,
    }
    return render_model_card(data, kwargs)


# ------------------------------------------------------------------------------------------------ public API
def _swap_into_place(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.parent / f".{dest.name}.export-old-{uuid.uuid4().hex[:8]}"
    os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    eval_results: EvalResultsInput = None,
    repo_id: str | None = None,
    overwrite: bool = False,
    license: str | None = None,
) -> Path:
    """Write a Hub-layout folder for the encoder trained in ``run_dir``; return ``out_dir``.

    Args:
        run_dir: the trainer's run folder (``config.yaml``, ``robust_encoder.json``, ``text_encoder/``...).
        out_dir: destination folder. Created if missing; built next to it in a temporary folder first.
        eval_results: evaluation-suite results: a path to a JSON file (an object or a list of objects), a dict,
            or a list of dicts. Default: ``run_dir/eval/results.json`` if it exists, else the card says "not
            evaluated yet".
        repo_id: the Hub id it will be pushed to (``org/name``, or ``org/name/subfolder``); used in the card's
            get-started snippet and ``model-index`` name.
        overwrite: replace an existing export in ``out_dir``. Weights and ``robust_encoder.json`` are replaced;
            ``README.md`` is always merged, never replaced (text outside the generated block is kept).
        license: licence id of the weights for the card (default: ``license`` from ``robust_encoder.json``, else
            ``"other"``).

    Raises:
        ExportError: the run folder or the evaluation results are incomplete or inconsistent.
        ExportExistsError: ``out_dir`` holds files other than ``README.md`` and ``overwrite`` is false.
    """
    run = Path(run_dir).expanduser()
    dest = Path(out_dir).expanduser()
    meta = read_run_metadata(run)
    recipe_text, recipe = _read_recipe(run)
    evaluations = _load_evaluations(eval_results, run, str(meta["concept"]))
    if repo_id is not None and not hub_ids(["/".join(repo_id.strip("/").split("/")[:2])]):
        raise ExportError(f"repo_id must look like 'org/name' (optionally '/subfolder'), got {repo_id!r}")

    run_abs, dest_abs = run.resolve(), dest.resolve()
    if dest_abs == run_abs or dest_abs in run_abs.parents:
        raise ExportError(f"out_dir {dest} would contain the run folder {run}; export somewhere else")
    existing_readme: str | None = None
    if dest.exists():
        if not dest.is_dir():
            raise ExportError(f"out_dir {dest} exists and is not a folder")
        others = sorted(p.name for p in dest.iterdir() if p.name != "README.md")
        if others and not overwrite:
            raise ExportExistsError(
                f"{dest} already holds {others[:5]}{' ...' if len(others) > 5 else ''}. Pass overwrite=True "
                "(--overwrite) to replace the export: the weights and robust_encoder.json are replaced and "
                "README.md is merged (your text outside the generated block is kept). Or choose another --out."
            )
        if (dest / "README.md").is_file():
            existing_readme = (dest / "README.md").read_text(encoding="utf-8")

    slots = list(meta["encoders"])
    # SDXL exports always keep slot subfolders, so a run that trained only one of the two encoders still says which
    nested = slots != ["text_encoder"] or "sdxl" in (meta.get("base_families") or [])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.export-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files: list[dict[str, str]] = []
        bases: dict[str, str] = {}
        for slot in slots:
            target = tmp / slot if nested else tmp
            prefix = f"{slot}/" if nested else ""
            if meta["format"] == "full":
                entries = _export_full(run / slot, target)
            else:
                entries, bases[slot] = _export_lora(run / slot, target, slot, str(meta["base_model"]))
            files += [{"path": prefix + e["name"], "what": e["what"]} for e in entries]

        from .. import __version__

        out_meta = dict(meta)
        out_meta.update({
            "schema_version": 1,
            "layout": {slot: slot if nested else "." for slot in slots},
            "license": license or meta.get("license") or "other",
            "repo_id": repo_id,
            "resolved_recipe": recipe,
            "evaluations": [ev.to_dict() for ev in evaluations],
            "exported_with": f"robust-encoders {__version__}",
        })
        if bases:
            out_meta["adapter_base"] = bases
        _write_json(tmp / RUN_METADATA, out_meta)

        card = _card(meta, evaluations, recipe_text=recipe_text, repo_id=repo_id, out_name=dest.name,
                     license=out_meta["license"], slots=slots, files=files, bases=bases)
        if existing_readme is not None:
            card = merge_model_card(existing_readme, card)
        (tmp / "README.md").write_text(str(card), encoding="utf-8")
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
