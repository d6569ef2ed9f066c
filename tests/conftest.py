"""Shared test fixtures."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CATALOGS = REPO.parent / "shared" / "data" / "catalogs"

warnings.filterwarnings("ignore", message=".*drawFFT requires a very large FFT.*")


@pytest.fixture(scope="session")
def shared_catalogs() -> Path:
    """The real galaxy catalogues beside the project (CI has them; a user's clone does not)."""
    if not SHARED_CATALOGS.is_dir():
        pytest.skip("../shared/data/catalogs is absent (only CI and developers have it)")
    return SHARED_CATALOGS
