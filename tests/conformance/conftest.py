"""Fixtures for conformance tests: the shared Matter test vectors."""

import json
import os
from pathlib import Path
from typing import Any

import pytest

# tests/conformance/conftest.py -> repository root is two levels up; shared/ sits beside it.
_REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The vectors folder: $MATTERFAB_VECTORS_DIR, else <repo root>/../shared/vectors."""
    configured = os.environ.get("MATTERFAB_VECTORS_DIR")
    path = Path(configured) if configured else _REPO_ROOT.parent / "shared" / "vectors"
    # Fail, never skip: a run without the vectors has checked nothing.
    assert (path / "onboarding.json").is_file(), f"onboarding vectors not found in {path}"
    return path


@pytest.fixture(scope="session")
def onboarding_vectors(vectors_dir: Path) -> dict[str, Any]:
    """The parsed onboarding.json (QR/manual, SPAKE2+, rotating ID, invalid passcodes)."""
    data: dict[str, Any] = json.loads((vectors_dir / "onboarding.json").read_text("utf-8"))
    return data
