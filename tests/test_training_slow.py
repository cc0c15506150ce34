"""The trainer issue's measured bars on the miniature world (about 10-15 minutes on 2 CPU cores).

Run with ``RUN_SLOW=1 python -m pytest tests/test_training_slow.py``; CI runs the fast suite only.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_default_star_recipe_erases_and_keeps_the_rest(tmp_path):
    from robust_encoders.evaluation import EvalConfig, evaluate_encoder
    from robust_encoders.evaluation.loading import load_encoder_for_eval
    from robust_encoders.miniature import load_pipeline
    from robust_encoders.training import train

    run = train("star", ["log.progress=false"], output_dir=tmp_path / "star")
    pipe = load_pipeline()
    encoder, _ = load_encoder_for_eval(run, pipe=pipe)
    cfg = EvalConfig(concept="star", n_prompts=24, n_retain=24, attacks=("synonym",), progress=False)
    erased = evaluate_encoder(encoder, pipe=pipe, config=cfg, encoder_name="ours")
    assert erased.details["original_pre_asr"] >= 0.9
    assert erased.summary["pre_asr"] <= 0.05
    assert erased.summary["retain_accuracy"] >= erased.details["original_retain_accuracy"] - 0.03
