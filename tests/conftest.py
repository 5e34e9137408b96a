"""Shared fixtures: the read-only ../shared folder and a real S3 server (weed mini) on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRM_SHARED_DIR", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout (TRM_SHARED_DIR overrides); tests that need it skip without it."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}: the reference fixtures and ARC files live there")
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir: Path) -> Path:
    path = shared_dir / "reference-fixtures"
    if not path.is_dir():
        pytest.skip(f"reference fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def arc_dir(shared_dir: Path) -> Path:
    path = shared_dir / "arc-agi"
    if not path.is_dir():
        pytest.skip(f"ARC task files not found at {path}")
    return path


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
