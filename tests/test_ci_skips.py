"""Under CI=true a skip fails the run unless its reason is a missing GPU (tests/ci_skips.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("reason, ci, code", [
    ("needs a CUDA GPU", "true", 0),
    ("Fashion-MNIST not installed", "true", 1),
    ("Fashion-MNIST not installed", "", 0),
])
def test_ci_fails_on_skips_other_than_a_missing_gpu(tmp_path, reason, ci, code):
    (tmp_path / "test_one.py").write_text(f"import pytest\n\n\ndef test_x():\n    pytest.skip({reason!r})\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == code, done.stdout + done.stderr
    assert ("other than a missing GPU" in done.stdout) == (code == 1)
