"""The README's Python example runs as printed and gives the output the README shows (to sampling noise)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- python-example: run by tests/test_readme_example.py (slow) -->"


def readme_blocks() -> tuple[str, str]:
    """(the example's code, the output block that follows it)."""
    text = README.read_text()
    after = text[text.index(MARKER):]
    code = re.search(r"```python\n(.*?)```", after, re.S).group(1)
    output = re.search(r"```text\n(.*?)```", after, re.S).group(1)
    return code, output


@pytest.mark.slow
def test_the_readme_python_example_prints_what_the_readme_shows(tmp_path):
    code, shown = readme_blocks()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [line for line in result.stdout.splitlines() if not line.startswith("Loading weights")]
    shown = shown.strip().splitlines()
    assert len(printed) == len(shown) == 3, printed
    assert printed[0].split(" {")[0] == shown[0].split(" {")[0]  # pipeline class and steps; timings vary
    fa, ra = map(float, re.findall(r"([\d.]+)%", printed[1]))
    shown_fa, shown_ra = map(float, re.findall(r"([\d.]+)%", shown[1]))
    assert fa <= shown_fa + 4 and ra >= shown_ra - 3, printed[1]  # 50 samples per digit: a few points of noise
    assert printed[2] == shown[2]
    assert (tmp_path / "no7" / "model_index.json").is_file()
