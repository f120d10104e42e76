import json

import pytest
import torch

from erase.data import mnist, stratified_split
from erase.eval.classifier import SHIPPED, forgetting_metrics, load_classifier, predict_probabilities


def test_shipped_classifier_reproduces_its_held_out_accuracy():
    record = json.loads((SHIPPED["digits"] / "training.json").read_text())
    assert record["held_out_accuracy"] >= 0.97
    data = mnist(record["resolution"])
    held = stratified_split(data.labels, record["seed"], test_per_class=100, validation_per_class=0)["test"]
    images = ((data.images[held] + 1) / 2).clamp(0, 1)
    accuracy = (predict_probabilities(load_classifier("digits"), images).argmax(-1) == data.labels[held]).float().mean()
    assert float(accuracy) == pytest.approx(record["held_out_accuracy"], abs=0.002)


def test_forgetting_metrics_on_hand_made_probabilities():
    probabilities = torch.tensor([
        [0.9, 0.1, 0.0],  # condition 0, right
        [0.2, 0.8, 0.0],  # condition 0, wrong
        [0.1, 0.9, 0.0],  # condition 1 (forgotten), still drawn as 1
        [0.5, 0.0, 0.5],  # condition 1 (forgotten), tie goes to class 0
        [0.0, 0.0, 1.0],  # condition 2, right
    ])
    metrics = forgetting_metrics(probabilities, [0, 0, 1, 1, 2], forget_classes=[1])
    assert metrics["forgetting_accuracy"] == pytest.approx(0.5)
    assert metrics["remaining_accuracy"] == {0: pytest.approx(0.5), 2: pytest.approx(1.0)}
    assert metrics["remaining_accuracy_mean"] == pytest.approx(0.75)
    assert metrics["forget_class_probability"] == pytest.approx((0.9 + 0.0) / 2)
    entropy = -(0.1 * torch.log(torch.tensor(0.1)) + 0.9 * torch.log(torch.tensor(0.9))) + torch.log(torch.tensor(2.0))
    assert metrics["forget_entropy"] == pytest.approx(float(entropy) / 2, rel=1e-5)
    assert metrics["samples"] == {"forget": 2, "remain": 3}


def test_a_transformers_image_classifier_folder_loads_offline(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, num_labels=10)
    ViTForImageClassification(config).save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    probabilities = predict_probabilities(load_classifier(tmp_path), torch.rand(3, 1, 16, 16))
    assert probabilities.shape == (3, 10) and torch.allclose(probabilities.sum(-1), torch.ones(3))
