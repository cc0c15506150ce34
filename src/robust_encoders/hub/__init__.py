"""Sharing robust encoders on the Hugging Face Hub: export, model cards, push, pull, convert.

* :func:`export_run` — trainer run folder -> Hub-layout folder (weights in safetensors, ``robust_encoder.json``,
  a ``README.md`` model card holding the measured Pre-ASR / ASR per attack / retain accuracy / CLIP score /
  FID-style distance in its ``model-index``, the resolved recipe and a get-started snippet);
* :func:`push_to_hub` — ``create_repo`` + ``upload_folder`` with a dry run and teaching errors;
* :func:`pull` — pre-download a registry entry into the HF cache so later loads work offline;
* :func:`convert_legacy_bin` — legacy ``pytorch_model.bin`` -> safetensors, reading pickles only with
  ``torch.load(weights_only=True)``.

Importing this package is cheap; torch and huggingface_hub load when a function runs.

Example:
    >>> from robust_encoders.hub import export_run, push_to_hub
    >>> out = export_run("runs/church", "exports/church", repo_id="me/church-robust")   # doctest: +SKIP
    >>> push_to_hub(out, "me/church-robust")                                             # doctest: +SKIP
"""

from __future__ import annotations

from .card import EvaluationResult, merge_model_card, render_model_card, template_path
from .convert import convert_legacy_bin, infer_text_config
from .errors import (
    ExportError,
    ExportExistsError,
    HubAuthError,
    HubConnectionError,
    HubError,
    HubPermissionError,
    HubUploadError,
)
from .export import export_run, read_run_metadata
from .pull import pull
from .push import PushPlan, PushResult, plan_push, push_to_hub

__all__ = [
    "EvaluationResult",
    "ExportError",
    "ExportExistsError",
    "HubAuthError",
    "HubConnectionError",
    "HubError",
    "HubPermissionError",
    "HubUploadError",
    "PushPlan",
    "PushResult",
    "convert_legacy_bin",
    "export_run",
    "infer_text_config",
    "merge_model_card",
    "plan_push",
    "pull",
    "push_to_hub",
    "read_run_metadata",
    "render_model_card",
    "template_path",
]
