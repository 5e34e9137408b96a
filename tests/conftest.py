"""Shared fixtures: the read-only ../shared folder and a real S3 server (weed mini) on loopback.

Outside CI a test that needs ../shared (or Chromium, in tests/test_report.py) skips with a clear message. With the
environment variable CI set (to anything but "", "0" or "false"), as CI services do, a missing ../shared or a
missing Chromium is an ERROR instead, so a CI run cannot turn green by skipping:

    CI=true .venv/bin/python -m pytest -q
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRM_SHARED_DIR", ROOT.parent / "shared"))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """pytest.skip(reason), except under CI, where what is missing is an error (pytest.fail)."""
    if in_ci():
        pytest.fail(f"CI is set, so this is an error, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def missing():
    """The fixture form of skip_or_fail, for test files: `missing("chromium not installed")`."""
    return skip_or_fail


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skip whose reason names a path inside ../shared (e.g. a CRD or dataset a test file looks up
    itself) is reported as a failure, like the fixtures below do."""
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci() and isinstance(report.longrepr, tuple)):
        return
    reason = str(report.longrepr[2])
    if str(SHARED) in reason or "../shared" in reason:
        report.outcome = "failed"
        report.longrepr = f"CI is set, so this is an error, not a skip: {reason}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (TRM_SHARED_DIR overrides); tests that need it skip without it (error in CI)."""
    if not SHARED.is_dir():
        skip_or_fail(f"../shared not found at {SHARED}: the reference fixtures and ARC files live there")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    path = shared_dir / "reference-fixtures"
    if not path.is_dir():
        skip_or_fail(f"reference fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def arc_dir(shared_dir: Path) -> Path:
    path = shared_dir / "arc-agi"
    if not path.is_dir():
        skip_or_fail(f"ARC task files not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny(fixtures_dir: Path) -> str:
    """The reference's tiny dataset (reference-fixtures/tiny_dataset): 15 train puzzles, 21 test examples."""
    path = fixtures_dir / "tiny_dataset"
    if not (path / "train" / "dataset.json").is_file():
        skip_or_fail(f"tiny dataset not found at {path}")
    return str(path)


@pytest.fixture(scope="session")
def three(arc_dir: Path, tmp_path_factory) -> str:
    """A dataset of one evaluation2 task with exactly 3 demonstration pairs (num_aug 2), also its test set:
    3 train examples per epoch."""
    import json

    from test_data_build import write_subset
    from trm.data.build import BuildConfig, build_dataset

    chal = json.loads((arc_dir / "arc-agi_evaluation2_challenges.json").read_text())
    task = next(k for k, v in chal.items() if len(v["train"]) == 3)
    prefix = write_subset(arc_dir, tmp_path_factory.mktemp("src3"), "evaluation2", "three", ids=[task])
    out = tmp_path_factory.mktemp("out3") / "ds"
    build_dataset(BuildConfig(prefix, str(out), ["three"], ["three"], num_aug=2, workers=1))
    return str(out)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server (`weed mini`) on 127.0.0.1 for the whole session.

    Yields the EmbeddedS3 object; its `.env()` holds the TRM_S3_ENDPOINT / AWS_* variables.
    """
    from trm.storage.embedded import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("weed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point this test's process at the embedded S3 server."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server.env()
