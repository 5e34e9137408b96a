"""The rows of tests/mutations.py still name code and tests that exist (the run itself: make mutations).

    .venv/bin/python -m pytest -q tests/test_mutations.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mutations  # noqa: E402


@pytest.mark.parametrize("mutation", mutations.MUTATIONS, ids=lambda m: m.name)
def test_each_snippet_occurs_once_and_changes_the_file(mutation):
    source = (ROOT / mutation.path).read_text()
    for old, new in mutation.edits():
        assert source.count(old) == 1, f"{mutation.name}: {old!r} occurs {source.count(old)} times in {mutation.path}"
        assert old != new


def test_the_guarding_tests_exist():
    ids = sorted({t for m in mutations.MUTATIONS for t in m.tests})
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_names_are_unique():
    names = [m.name for m in mutations.MUTATIONS]
    assert len(names) == len(set(names))
