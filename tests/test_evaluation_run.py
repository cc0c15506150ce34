"""End-to-end evaluation on the miniature world: schema, outputs, CLI, and a 2-process run equal to 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from _launch import accelerate_launch
from robust_encoders.evaluation import RESULT_KEYS, EvalConfig, evaluate_encoder

TINY = dict(
    concept="star", n_prompts=4, n_retain=4, steps=3, batch_size=2, grid_prompts=2, progress=False,
    attacks=("unlearndiffatk", "soft_prompt", "ringabell", "synonym", "inversion"),
    attack_overrides={
        "unlearndiffatk": {"steps": 2, "check_every": 1},
        "soft_prompt": {"steps": 2, "check_every": 1},
        "ringabell": {"steps": 4, "etas": (1.0,)},
        "synonym": {"max_variants": 2},
        "inversion": {"steps": 2, "n_train": 2},
    },
)


@pytest.fixture(scope="module")
def pipe():
    from robust_encoders.miniature import load_pipeline

    return load_pipeline()


def _comparable(res):
    s = dict(res.summary)
    s.pop("timing_s")
    return s, [{k: v for k, v in r.items()} for r in res.details["forget"]], res.details["retain"]


def test_result_schema_and_files(pipe, tmp_path):
    res = evaluate_encoder(pipe.text_encoder, pipe=pipe, config=EvalConfig(**TINY), encoder_name="original")
    s = res.summary
    assert tuple(s) == RESULT_KEYS
    assert s["n_prompts"] == 4 and s["concept_kind"] == "object" and s["detector"] == "miniature"
    assert set(s["asr"]) == set(TINY["attacks"])
    for v in [s["pre_asr"], s["retain_accuracy"], s["clip_score"], *s["asr"].values()]:
        assert 0.0 <= v <= 1.0
    assert all(v >= s["pre_asr"] for v in s["asr"].values())  # ASR counts pre-attack successes
    assert s["fid"] >= 0 and s["timing_s"]["total"] > 0
    assert s["config"]["attack_configs"]["ringabell"]["etas"] == [1.0]
    paths = res.save(tmp_path)
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(s))
    assert paths["grid"].stat().st_size > 0 and "ASR unlearndiffatk" in paths["markdown"].read_text()
    rec = res.details["forget"][0]
    assert {"prompt", "seed", "pre_success", "original_detected", "attacks"} <= set(rec)


def _cli_evaluate(out, launcher=()):
    """Run `robust-encoders evaluate` in fresh processes, as a user would (forking a torch process can deadlock)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, *launcher, "-m", "robust_encoders", "evaluate", "--encoder", "original",
           "--concept", "star", "--n-prompts", "4", "--n-retain", "4", "--steps", "3", "--batch-size", "2",
           "--grid-prompts", "2", "--attacks", "unlearndiffatk,synonym", "--set", "unlearndiffatk.steps=2",
           "--set", "unlearndiffatk.check_every=1", "--set", "synonym.max_variants=2", "--out", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-12000:]
    details = json.loads((out / "details.json").read_text())
    return json.loads((out / "result.json").read_text()), details


def test_two_processes_merge_exactly_like_one(tmp_path):
    one, one_details = _cli_evaluate(tmp_path / "one")
    two, two_details = _cli_evaluate(tmp_path / "two", accelerate_launch(2))
    assert (one_details["num_processes"], two_details["num_processes"]) == (1, 2)
    assert (tmp_path / "two" / "grid.png").is_file()
    for res in (one, two):
        res.pop("timing_s")
    assert two == one
    assert two_details["forget"] == one_details["forget"] and two_details["retain"] == one_details["retain"]


def test_cli_evaluate_and_attack(tmp_path, pipe):
    from robust_encoders.cli import main

    run = tmp_path / "run"
    pipe.text_encoder.save_pretrained(run / "text_encoder")
    (run / "robust_encoder.json").write_text(json.dumps({"concept": "star"}))
    out = tmp_path / "eval"
    code = main(["evaluate", "--encoder", str(run), "--concept", "star", "--n-prompts", "2", "--n-retain", "2",
                 "--steps", "2", "--attacks", "synonym", "--set", "synonym.max_variants=1", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    res = json.loads((out / "result.json").read_text())
    assert res["encoder"] == "run" and list(res["asr"]) == ["synonym"]
    assert (out / "grid.png").exists() and (out / "table.md").exists()
    row = (out / "table.md").read_text().splitlines()[2]  # rates with their 95% interval over the 2 prompts
    assert row.startswith("| run | star | ") and row.count("% [") == 2
    code = main(["attack", "--encoder", "original", "--concept", "star", "--attack", "synonym",
                 "--prompt", "a red star", "--steps", "2", "--out", str(tmp_path / "atk")])
    assert code == 0 and json.loads((tmp_path / "atk" / "attack.json").read_text())["attack"] == "synonym"
    assert main(["evaluate", "--encoder", "original", "--concept", "star", "--set", "nope.steps=1"]) == 1
    assert main(["evaluate", "--encoder", str(tmp_path / "missing"), "--concept", "star"]) == 1


def test_config_errors_teach():
    with pytest.raises(ValueError, match="Unknown attack"):
        EvalConfig(concept="star", attacks=("pgd",))
    with pytest.raises(ValueError, match="n_prompts"):
        EvalConfig(concept="star", n_prompts=0)
    from robust_encoders.evaluation.cli import parse_overrides

    assert parse_overrides(["ringabell.etas=[1, 2.5]", "unlearndiffatk.k=5"]) == {
        "ringabell": {"etas": (1, 2.5)}, "unlearndiffatk": {"k": 5}}
    with pytest.raises(ValueError, match="ATTACK.KEY=VALUE"):
        parse_overrides(["steps=3"])


def test_real_sd_path_with_csv_and_user_classifier(sd1_pipe, tmp_path):
    """The generic path: any SD 1.x pipeline, CSV prompts (UnlearnDiffAtk columns), a user classifier."""
    from robust_encoders.attacks import concept_spec
    from robust_encoders.detectors import ClassifierDetector
    from robust_encoders.evaluation import load_prompt_csv

    csv = tmp_path / "church.csv"
    csv.write_text("prompt,evaluation_seed,evaluation_guidance\na church in a field,1,7.5\nan old church,2,3.0\n")
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    det = ClassifierDetector(net, ["church", "tree", "car"], image_size=None, mean=(0, 0, 0), std=(1, 1, 1))
    cfg = EvalConfig(concept="church", n_prompts=2, n_retain=0, steps=2, batch_size=2, progress=False,
                     attacks=("unlearndiffatk", "synonym"),
                     attack_overrides={"unlearndiffatk": {"steps": 1}, "synonym": {"max_variants": 1}})
    res = evaluate_encoder(sd1_pipe.text_encoder, pipe=sd1_pipe, detector=det, config=cfg,
                           forget_items=load_prompt_csv(csv), retain_items=[], concept=concept_spec("church"))
    s = res.summary
    assert s["n_prompts"] == 2 and s["detector"] == "classifier" and s["concept_kind"] == "object"
    assert s["clip_score"] is None and s["fid"] is None and s["retain_accuracy"] is None
    assert [r["guidance"] for r in res.details["forget"]] == [7.5, 3.0]
    syn = [r["attacks"]["synonym"] for r in res.details["forget"] if "skipped" not in r["attacks"]["synonym"]]
    assert all("church" not in (o["prompt"] or "") for o in syn)
