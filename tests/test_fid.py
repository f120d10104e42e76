import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from erase.errors import UsageError
from erase.eval.fid import FID, InceptionFeatures, real_statistics_path
from erase.images import to_unit_float


class Projection(nn.Module):
    """Fixed linear features of flattened images (deterministic, 6-d)."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 6)
        torch.manual_seed(0)
        nn.init.normal_(self.linear.weight)

    def forward(self, images):
        return self.linear(images.flatten(1))


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def gaussian_images(n, shift, seed):
    generator = torch.Generator().manual_seed(seed)
    return (0.5 + 0.1 * torch.randn(n, 1, 4, 4, generator=generator) + shift).clamp(0, 1)


def test_fid_matches_a_scipy_sqrtm_reference_and_is_zero_for_a_set_with_itself():
    real, fake = gaussian_images(400, 0.0, 1), gaussian_images(300, 0.05, 2)
    extractor = Projection()
    fid = FID(extractor, "projection")
    fid.update(real, real=True)
    fid.update(fake, real=False)
    with torch.no_grad():
        expected = scipy_fid(extractor(real).double().numpy(), extractor(fake).double().numpy())
    assert fid.compute() == pytest.approx(expected, rel=1e-4)
    assert expected > 0.05  # the sets differ, so a zero here would mean the test compares nothing

    same = FID(extractor, "projection")
    same.update(real, real=True)
    same.update(real, real=False)
    assert abs(same.compute()) < 1e-4


def test_uint8_and_unit_floats_give_the_same_fid_and_minus_one_one_is_refused():
    images = (gaussian_images(200, 0.0, 3) * 255).round().to(torch.uint8)
    other = (gaussian_images(200, 0.1, 4) * 255).round().to(torch.uint8)
    values = []
    for convert in (lambda x: x, lambda x: x.float() / 255):
        fid = FID(Projection(), "projection")
        fid.update(convert(images), real=True)
        fid.update(convert(other), real=False)
        values.append(fid.compute())
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    with pytest.raises(UsageError, match=r"look like \[-1, 1\].*\(images \+ 1\) / 2"):
        FID(Projection(), "projection").update(images.float() / 127.5 - 1, real=False)
    with pytest.raises(UsageError, match="maximum"):
        to_unit_float(images.float())


def test_cached_real_statistics_give_the_same_fid(tmp_path):
    real, fake = gaussian_images(300, 0.0, 5), gaussian_images(300, 0.05, 6)
    first = FID(Projection(), "projection")
    first.update(real, real=True)
    first.update(fake, real=False)
    path = real_statistics_path(tmp_path, "toy", 4, "projection")
    first.save_real(path)
    second = FID(Projection(), "projection")
    second.load_real(path)
    second.update(fake, real=False)
    assert second.compute() == pytest.approx(first.compute(), rel=1e-9)
    assert real_statistics_path(tmp_path, "toy", 8, "projection") != path


def test_inception_features_explain_what_is_missing(tmp_path, monkeypatch):
    try:
        import cleanfid.inception_torchscript  # noqa: F401
    except ImportError:
        pass
    else:  # installed: the weights file is what is missing
        with pytest.raises(UsageError, match="inception-2015-12-05.pt.*nothing is downloaded"):
            InceptionFeatures(tmp_path)
    monkeypatch.setitem(sys.modules, "cleanfid.inception_torchscript", None)  # as if clean-fid were not installed
    with pytest.raises(UsageError, match=r"need clean-fid.*pip install --no-deps clean-fid.*fid_features classifier"):
        InceptionFeatures(tmp_path)
