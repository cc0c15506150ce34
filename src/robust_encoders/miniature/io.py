"""Saving and loading the miniature world's weights (safetensors only, fully offline)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .models import ConceptDetector

__all__ = ["WEIGHTS_DIR", "save_detector", "load_detector", "load_pipeline", "load_clip", "assemble_weights"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
DETECTOR_WEIGHTS = "model.safetensors"
DETECTOR_CONFIG = "config.json"


def _weights_dir(path) -> Path:
    p = Path(path) if path is not None else WEIGHTS_DIR
    if not (p / "pipeline" / "model_index.json").exists():
        raise FileNotFoundError(
            f"No miniature world found at {p} (expected {p / 'pipeline' / 'model_index.json'}). "
            "A normal install ships it inside the package; to rebuild it run "
            "`robust-encoders miniature build --out DIR` and pass `path=DIR / 'weights'`."
        )
    return p


def save_detector(det: ConceptDetector, folder: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in det.state_dict().items()}, folder / DETECTOR_WEIGHTS)
    width = det.heads["object"].in_features // 4
    (folder / DETECTOR_CONFIG).write_text(json.dumps({"width": width, "architecture": "ConceptDetector"}))


def load_detector(path: str | os.PathLike | None = None, device=None) -> ConceptDetector:
    """The ground-truth concept detector (heads: object, colour, style), in eval mode.

    Example:
        >>> from robust_encoders.miniature import load_detector, sample_scenes
        >>> det = load_detector()
        >>> b = sample_scenes(8, seed=0)
        >>> import torch
        >>> x = torch.from_numpy(b.images).permute(0, 3, 1, 2).float() / 255
        >>> bool((det.predict(x)["object"].numpy() == b.objects).mean() > 0.8)
        True
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else _weights_dir(None) / "detector"
    cfg = json.loads((folder / DETECTOR_CONFIG).read_text())
    det = ConceptDetector(width=cfg["width"])
    det.load_state_dict(load_file(folder / DETECTOR_WEIGHTS))
    return det.eval().to(device or "cpu")


def load_pipeline(path: str | os.PathLike | None = None, *, torch_dtype=torch.float32, device=None):
    """The miniature ``StableDiffusionPipeline`` (32x32 images), loaded offline with ``from_pretrained``.

    Example:
        >>> from robust_encoders.miniature import load_pipeline
        >>> pipe = load_pipeline()
        >>> pipe.text_encoder.config.hidden_size, pipe.unet.config.cross_attention_dim
        (64, 64)
    """
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        _weights_dir(path) / "pipeline", dtype=torch_dtype, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe


def load_clip(path: str | os.PathLike | None = None, *, torch_dtype=torch.float32):
    """The miniature ``CLIPModel`` (text and vision towers) used for CLIP scores."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(_weights_dir(path) / "clip", dtype=torch_dtype).eval()


def assemble_weights(pipe, clip, detector_dir: Path, dest: Path) -> Path:
    """Write pipeline/, clip/ (fp16 safetensors) and detector/ into ``dest`` atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=dest.parent))
    try:
        pipe.to(torch.float16).save_pretrained(tmp / "pipeline", safe_serialization=True)
        clip.to(torch.float16).save_pretrained(tmp / "clip", safe_serialization=True)
        shutil.copytree(detector_dir, tmp / "detector")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
