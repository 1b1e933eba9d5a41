"""Where the shared test vectors and public Matter test credentials live.

$MATTERFAB_VECTORS_DIR, else `<repo root>/../shared/vectors` (the folder beside the checkout).
Tests import this instead of guessing paths, so a CI checkout can point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

VECTORS_ENV = "MATTERFAB_VECTORS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]


def vectors_dir() -> Path:
    """The vectors folder; fails loudly (not a skip) when it is missing."""
    env = os.environ.get(VECTORS_ENV)
    folder = Path(env) if env else REPO_ROOT.parent / "shared" / "vectors"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"test vectors not found at {folder}; set {VECTORS_ENV} to the vectors folder"
        )
    return folder
