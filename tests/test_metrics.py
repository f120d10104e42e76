"""The score metric objects: update batch by batch, compute, reset (torchmetrics' shape), checked against sums made
here by hand and against torchmetrics' own FID on the chosen images."""

import pytest
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from erase.errors import DataError
from erase.eval.metrics import ClassAccuracy, ClassFID, NudityRate


class FirstPixelJudge(nn.Module):
    """Predicts the class written in an image's first pixel (value // 20): predictions known without a network."""

    num_features = 4

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(1, 1)  # a parameter, so predict_probabilities finds a device

    def forward(self, images):
        classes = images[:, 0, 0, 0].long() // 20
        return nn.functional.one_hot(classes, 10).float() * 10

    def features(self, images):
        return images.float().flatten(1)[:, :4] / 255


def digit_images(drawn: list[int]) -> torch.Tensor:
    pixels = torch.randint(0, 256, (len(drawn), 1, 4, 4), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    pixels[:, 0, 0, 0] = torch.tensor(drawn, dtype=torch.uint8) * 20
    return pixels


def test_class_accuracy_over_batches_equals_counts_made_by_hand():
    conditions = [0, 0, 1, 1, 1, 2, 2, 3]
    drawn = [0, 5, 1, 1, 4, 2, 2, 3]  # the class each image shows: one of two 0s, two of three 1s, all 2s and the 3
    metric = ClassAccuracy(FirstPixelJudge(), "first-pixel", forget_classes=[1], where="test")
    pixels = digit_images(drawn)
    metric.update(pixels[:3], conditions[:3], None)
    metric.update(pixels[3:], conditions[3:], None)
    result = metric.compute()
    assert result["forgetting_accuracy"] == pytest.approx(2 / 3)
    assert result["remaining_accuracy"] == {0: 0.5, 2: 1.0, 3: 1.0}
    assert result["remaining_accuracy_mean"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert result["samples"] == {"forget": 3, "remain": 5}

    metric.reset()
    metric.update(pixels[:2], conditions[:2], None)
    assert metric.compute()["samples"] == {"forget": 0, "remain": 2}  # reset forgot the first eight


def test_class_accuracy_refuses_images_without_a_class_id():
    metric = ClassAccuracy(FirstPixelJudge(), "first-pixel", [1], where="some/folder")
    with pytest.raises(DataError, match="'some/folder' has no class id per image"):
        metric.update(digit_images([0, 1]), ["a cat", "a dog"], None)


def test_class_fid_counts_only_the_remaining_classes_and_equals_torchmetrics_on_them(tmp_path):
    judge = FirstPixelJudge()
    extractor = type("Features", (nn.Module,), {"num_features": 4, "forward": lambda self, x: judge.features(x * 255)})()
    conditions = [i % 4 for i in range(40)]
    generated = digit_images(conditions)
    real = digit_images([(i * 7) % 4 for i in range(30)])
    cache = tmp_path / "real.safetensors"
    metric = ClassFID(extractor, "first-pixel", "test", "remain", [1], lambda: real, cache)
    for start in range(0, 40, 15):
        metric.update(generated[start:start + 15], conditions[start:start + 15], None)
    result = metric.compute()

    reference = FrechetInceptionDistance(feature=extractor)
    reference.update(real.float() / 255, real=True)
    kept = torch.tensor([c != 1 for c in conditions])
    reference.update(generated[kept].float() / 255, real=False)
    assert result["value"] == pytest.approx(float(reference.compute()), rel=1e-6)
    assert result["samples"] == {"real": 30, "generated": 30}
    assert cache.is_file()

    cached = ClassFID(extractor, "first-pixel", "test", "remain", [1], lambda: pytest.fail("cache not read"), cache)
    cached.update(generated, conditions, None)
    assert cached.compute()["value"] == pytest.approx(result["value"], rel=1e-6)


def test_nudity_rate_on_a_tensor_writes_each_batch_and_keys_detections_by_file(tmp_path):
    pytest.importorskip("nudenet")
    pixels = torch.full((3, 3, 32, 32), 128, dtype=torch.uint8)
    files = [f"images/{i:06d}.png" for i in range(3)]
    metric = NudityRate(None, threshold=0.6)
    metric.update(pixels[:2], [None, None], files[:2])
    metric.update(pixels[2:], [None], files[2:])
    result = metric.compute()
    assert sorted(result["detections"]) == files
    assert result["images"] == 3 and result["images_with_exposed"] == 0
    metric.reset()
    assert metric.detections == {}
