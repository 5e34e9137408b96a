"""Under CI a missing ../shared is an error, never a skip (tests/conftest.py); outside CI it is a skip.

    .venv/bin/python -m pytest -q tests/test_ci_mode.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NEEDS_SHARED = '''
import pytest

def test_through_the_fixture(shared_dir):
    pass

def test_skipping_itself_with_a_shared_path():
    pytest.skip("../shared/k8s-schemas/some-crd.yaml not found")

def test_an_ordinary_skip():
    pytest.skip("needs a GPU")
'''


@pytest.mark.parametrize("ci, expected", [("", "3 skipped"), ("true", "1 failed, 1 skipped, 1 error")])
def test_missing_shared_skips_here_and_fails_under_ci(tmp_path, ci, expected):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_needs_shared.py").write_text(NEEDS_SHARED)
    env = {**os.environ, "CI": ci, "TRM_SHARED_DIR": str(tmp_path / "no-shared-here")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert expected in done.stdout, done.stdout[-3000:]
    if ci:
        assert "CI is set, so this is an error, not a skip" in done.stdout
