import numpy as np
import pytest
import torch
from PIL import Image

from erase.data import digits, image_folder, load_dataset, mnist, parse_class_ids, split_by_class
from erase.errors import UsageError


def test_mnist_ships_500_digits_per_class_resized_to_minus_one_one():
    data = mnist(16)
    assert data.images.shape == (5000, 1, 16, 16)
    assert data.images.min() == -1.0 and data.images.max() == 1.0
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert mnist(28).images.shape[-1] == 28


def test_digits_are_scaled_from_sixteen_grey_levels():
    data = digits(8)
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.images.min() == -1.0 and data.images.max() == 1.0


def test_image_folder_uses_sorted_subfolders_as_classes(tmp_path):
    for name, value in (("cat", 0), ("dog", 255)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = image_folder(tmp_path, resolution=4)
    assert data.class_names == ["cat", "dog"]
    assert data.images.shape == (4, 3, 4, 4) and data.labels.tolist() == [0, 0, 1, 1]
    assert data.images[0].max() == -1.0 and data.images[-1].min() == 1.0


def test_split_by_class_and_its_errors():
    data = digits(8)
    forget, remain = split_by_class(data, [3, 7])
    assert set(forget.labels.tolist()) == {3, 7} and 3 not in remain.labels and 7 not in remain.labels
    assert len(forget) + len(remain) == len(data)
    with pytest.raises(UsageError, match=r"class ids \[12\] have no images.*classes present: \[0, 1"):
        split_by_class(data, [12])
    with pytest.raises(UsageError, match="remain set is empty"):
        split_by_class(data, list(range(10)))


def test_class_id_parsing():
    assert parse_class_ids("7") == [7]
    assert parse_class_ids("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(UsageError, match="cannot read class ids"):
        parse_class_ids("seven")


def test_unknown_data_source_names_the_choices(tmp_path):
    with pytest.raises(UsageError, match="unknown data source 'cifar'"):
        load_dataset("cifar", 8)
