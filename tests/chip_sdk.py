"""The Matter SDK's own setup-payload code (home-assistant-chip-core), loaded for tests.

`chip.native.Init()` starts the whole controller stack; payload parsing and generation never
use it, so the handle is taken uninitialised. Importing `chip` needs Debian's libnl-3-200 and
libnl-route-3-200 (`make apt`): when it cannot load, tests fail rather than skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def chip_setup_payload() -> Iterator[Any]:
    """A chip SetupPayload usable without stack initialisation."""
    import chip.native
    import chip.setup_payload.setup_payload as chip_sp

    def uninitialised_handle() -> Any:
        return chip.native.GetLibraryHandle(chip.native.HandleFlags(0))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chip_sp, "GetLibraryHandle", uninitialised_handle)
        yield chip_sp.SetupPayload()
