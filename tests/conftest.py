"""Shared fixtures. Tests run from the project root; shared datasets are at ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "datasets").resolve()

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test in a fresh folder holding a link to the project's configs/."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path
