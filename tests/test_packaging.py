"""Install anywhere: the wheel carries the shipped model and classifier, and an installed copy finds them."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_FILES = [
    "erase/assets/mnist-cfg-unet/model_index.json", "erase/assets/mnist-cfg-unet/run.json",
    "erase/assets/mnist-cfg-unet/unet/config.json", "erase/assets/mnist-cfg-unet/unet/diffusion_pytorch_model.safetensors",
    "erase/assets/mnist-cfg-unet/scheduler/scheduler_config.json",
    "erase/assets/digit-classifier/config.json", "erase/assets/digit-classifier/model.safetensors",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    setuptools = pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this venv")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"pyproject.toml's build needs setuptools>=77, this venv has {setuptools.__version__}")
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    # a copy of the package sources: setuptools would also pack files left in an old build/ folder of the checkout
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "erase", source / "erase", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, cwd=out, capture_output=True)
    return next(out.glob("erase-*.whl"))


def test_the_wheel_carries_the_shipped_model_and_classifier_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in SHIPPED_FILES:
            assert name in names, f"{name} is not in {wheel.name}"
            assert archive.read(name) == (ROOT / name).read_bytes(), name
        assert "erase/cli/main.py" in names and "erase/methods/sfron.py" in names


def test_the_wheel_installs_one_top_level_name_erase(wheel):
    with zipfile.ZipFile(wheel) as archive:
        roots = {name.split("/")[0] for name in archive.namelist()}
        dist_info = next(root for root in roots if root.endswith(".dist-info"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert roots - {dist_info} == {"erase"}, sorted(roots)  # no pipelines/, eval/, scripts/ or assets/ beside it
    assert "erase = erase.cli.main:main" in entry_points


def test_an_installed_copy_loads_its_own_shipped_model_from_another_directory(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    probe = (
        "import erase as c, erase.eval.classifier as k\n"
        "from erase.pipelines import load_adapter\n"
        "a = load_adapter(c.SHIPPED_MODEL); m = k.load_classifier('digits')\n"
        "print(c.SHIPPED_MODEL); print(k.SHIPPED['digits']); print(a.backbone, a.num_classes)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    base, classifier, loaded = result.stdout.strip().splitlines()[-3:]
    assert Path(base).is_relative_to(target) and Path(classifier).is_relative_to(target)  # not the source tree
    assert loaded == "cfg_unet 10"
