"""Atomic training checkpoints: safetensors for every tensor, JSON for the rest.

A checkpoint is a folder ``RUN_DIR/checkpoints/step_000100/`` holding

* ``state.safetensors``: trainable weights (``model.<name>``), the optimizer state flattened
  (``optim.<param index>.<key>``), the warm-start state of the attack (``attack.<field>``);
* ``state.json``: step, optimizer param groups and scalar state, grad-scaler state, resolved
  config fingerprint, attack metadata;
* ``rng_rank<r>.safetensors`` + ``rng_rank<r>.json``: each process's torch / CUDA / numpy /
  Python RNG states.

It is written into ``.tmp-step_000100`` and renamed into place only when complete, so a run
killed at any moment leaves either the previous checkpoint or the new one, never half of one.
Nothing is pickled; loading needs no ``torch.load``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_PREFIX",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
    "capture_rng",
    "restore_rng",
    "write_rank_rng",
    "read_rank_rng",
    "write_checkpoint",
    "read_checkpoint",
    "prune_checkpoints",
    "serialize_dataclass",
    "deserialize_dataclass",
]

CHECKPOINT_PREFIX = "step_"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").is_file():
            try:
                out.append((int(p.name[len(CHECKPOINT_PREFIX):]), p))
            except ValueError:
                continue
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> Path | None:
    cps = list_checkpoints(run_dir)
    return cps[-1][1] if cps else None


# -- optimizer ------------------------------------------------------------------------------------------------------
def flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer ``state_dict`` -> (tensors ``optim.<idx>.<key>``, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state_dict["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if not key.startswith("optim."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    return {"state": state, "param_groups": meta["param_groups"]}


# -- RNG -------------------------------------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every global RNG state of this process: (tensors, JSON-able rest)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    py = random.getstate()
    meta = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted((int(k.split(".")[1]), v) for k, v in tensors.items() if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([v for _, v in cuda][: torch.cuda.device_count()])
    n = meta["numpy"]
    np.random.set_state((n["name"], tensors["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    v, state, gauss = meta["python"]
    random.setstate((v, tuple(state), gauss))


# -- dataclass states (the attack's warm start) --------------------------------------------------------------------
def serialize_dataclass(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A dataclass of tensors / scalars -> (tensors ``<prefix><field>``, JSON-able scalars)."""
    if obj is None:
        return {}, {"present": False}
    if not is_dataclass(obj):
        raise TypeError(f"Cannot checkpoint a {type(obj).__name__}; expected a dataclass.")
    tensors, scalars = {}, {"present": True, "fields": {}}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if torch.is_tensor(v):
            tensors[f"{prefix}{f.name}"] = v.detach().to("cpu").contiguous().clone()
        elif v is None or isinstance(v, (bool, int, float, str)):
            scalars["fields"][f.name] = v
        else:
            raise TypeError(f"Cannot checkpoint field {f.name!r} of {type(obj).__name__} ({type(v).__name__}).")
    return tensors, scalars


def deserialize_dataclass(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str, device=None):
    if not meta or not meta.get("present"):
        return None
    kwargs = dict(meta["fields"])
    for key, v in tensors.items():
        if key.startswith(prefix):
            kwargs[key[len(prefix):]] = v.to(device) if device is not None else v
    return cls(**kwargs)


# -- files -----------------------------------------------------------------------------------------------------------
def _tmp_dir(final: Path) -> Path:
    return final.parent / f".tmp-{final.name}"


def write_rank_rng(run_dir: Path, step: int, rank: int) -> None:
    """Each process writes its RNG states into the checkpoint being assembled."""
    from safetensors.torch import save_file

    tmp = _tmp_dir(checkpoint_dir(run_dir, step))
    tmp.mkdir(parents=True, exist_ok=True)
    tensors, meta = capture_rng()
    save_file(tensors, str(tmp / f"rng_rank{rank}.safetensors"))
    (tmp / f"rng_rank{rank}.json").write_text(json.dumps(meta))


def read_rank_rng(ckpt: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    from safetensors.torch import load_file

    f = Path(ckpt) / f"rng_rank{rank}.safetensors"
    if not f.is_file():
        return None
    return load_file(str(f)), json.loads((Path(ckpt) / f"rng_rank{rank}.json").read_text())


def write_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Main process: write the shared state and atomically publish the folder (call after every rank's RNG)."""
    from safetensors.torch import save_file

    final = checkpoint_dir(run_dir, step)
    tmp = _tmp_dir(final)
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
    with open(tmp / "state.json", "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_checkpoint(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    return load_file(str(ckpt / "state.safetensors")), json.loads((ckpt / "state.json").read_text())


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (and stale temporary folders)."""
    cps = list_checkpoints(run_dir)
    for _, p in cps[:-keep] if keep > 0 else cps:
        shutil.rmtree(p, ignore_errors=True)
    root = Path(run_dir) / "checkpoints"
    newest = cps[-1][0] if cps else -1
    for p in root.glob(".tmp-*") if root.is_dir() else []:
        try:
            s = int(p.name.split(CHECKPOINT_PREFIX)[-1])
        except ValueError:
            continue
        if s <= newest:
            shutil.rmtree(p, ignore_errors=True)
