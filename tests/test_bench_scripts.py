"""The benchmark script's resume logic: an existing table is completed, not recomputed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "evaluate_concepts.py"


def _bench():
    spec = importlib.util.spec_from_file_location("evaluate_concepts", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_uda_k_column_is_added_to_an_existing_row_without_recomputing_it(tmp_path):
    bench = _bench()
    common = ["--concepts", "star", "--rows", "original", "--n-prompts", "2", "--n-retain", "0",
              "--attacks", "synonym", "--out", str(tmp_path), "--eval-set", "unlearndiffatk.steps=1"]
    assert bench.main(common + ["--uda-k", "0"]) == 0
    path = tmp_path / "star-original.json"
    first = json.loads(path.read_text())
    assert set(first["asr"]) == {"synonym"}
    first["asr"]["synonym"] = 0.123  # a marker: reusing the row must keep it
    path.write_text(json.dumps(first))

    assert bench.main(common + ["--uda-k", "5"]) == 0
    second = json.loads(path.read_text())
    assert second["asr"]["synonym"] == 0.123
    assert 0.0 <= second["asr"]["unlearndiffatk k=5"] <= 1.0
    assert second["timing_s"]["unlearndiffatk k=5"] > 0
    saved = json.loads((tmp_path / "star-original" / "unlearndiffatk-k5" / "result.json").read_text())
    assert saved["config"]["attack_configs"]["unlearndiffatk"]["k"] == 5
    assert "ASR unlearndiffatk k=5" in (tmp_path / "evaluate_concepts.md").read_text()


def test_bounded_soft_prompt_column_is_added_like_the_uda_k_one(tmp_path):
    bench = _bench()
    common = ["--concepts", "star", "--rows", "original", "--n-prompts", "2", "--n-retain", "0", "--uda-k", "0",
              "--attacks", "synonym", "--out", str(tmp_path), "--eval-set", "soft_prompt.steps=2",
              "--eval-set", "soft_prompt.check_every=1"]
    assert bench.main(common) == 0
    assert bench.main(common + ["--soft-bound", "vocab"]) == 0
    row = json.loads((tmp_path / "star-original.json").read_text())
    assert set(row["asr"]) == {"synonym", "soft_prompt vocab"}
    saved = json.loads((tmp_path / "star-original" / "soft_prompt-vocab" / "result.json").read_text())
    assert saved["config"]["attack_configs"]["soft_prompt"]["bound"] == "vocab"
    assert saved["config"]["attack_configs"]["soft_prompt"]["steps"] == 2  # --eval-set still applies
    assert "ASR soft_prompt vocab" in (tmp_path / "evaluate_concepts.md").read_text()
