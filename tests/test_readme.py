"""The README's promises that can be run: its Python examples (the GPU one on NumPy here) and the
test commands that CI runs."""
import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def on_numpy(code):
    """A GPU example as it runs without a GPU, as the README says: NumPy for CuPy."""
    return code.replace("import cupy as cp", "import numpy as cp").replace('backend="cuda"', 'backend="numpy"')


def test_the_training_example_prints_a_falling_loss():
    (example,) = [code for code in python_blocks() if "import cupy as cp" in code]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(on_numpy(example), "README.md", "exec"), {})
    losses = [float(m) for m in re.findall(r"loss (\d+\.\d+)", printed.getvalue())]
    assert len(losses) == 6
    assert losses[-1] < losses[0] / 100, losses  # the README says about 300×


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_every_python_example_runs(index):
    exec(compile(on_numpy(python_blocks()[index]), "README.md", "exec"), {})


def test_the_test_commands_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    readme_part = ci[ci.index("# --- README"):]
    commands = [line for line in readme_part.splitlines()[1:] if line and not line.startswith("#")]
    tests_section = README[README.index("## Run the tests"):]
    block = re.search(r"```bash\n(.*?)```", tests_section, flags=re.S).group(1)
    for command in commands:
        assert command in block.splitlines(), command


def test_the_readme_stays_short():
    """The README is the way in; manuals live in docs/."""
    assert len(README) <= 15_000, f"README.md has {len(README)} characters; move detail to docs/"
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (REPO / link).is_file(), link
