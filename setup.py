"""The native part of matterfab (issue #26): two small C extensions beside their Python modules.

- matterfab.matter._pbkdf2: PBKDF2-HMAC-SHA256 for the SPAKE2+ verifier (pbkdf2.py).
- matterfab.matter._qrmask: the QR Code mask evaluation of every label (label.py).

Everything else is in pyproject.toml. `pip install -e .` (what `make install` runs) compiles the
extensions with the machine's C compiler and puts them beside the sources, so an editable install
imports them. There is no pure-Python fallback: when one cannot be built, the install fails with
one line naming it and saying why, instead of a pipeline that silently runs at a fraction of the
speed.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PBKDF2_SOURCE = "shared/matterfab/matter/_pbkdf2.c"
QRMASK_SOURCE = "shared/matterfab/matter/_qrmask.c"


class BuildNative(build_ext):
    """build_ext whose failure is one line naming the extension and the cause."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler missing, headers missing, compile error
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            sys.stderr.write(
                f"error: cannot build matterfab's native extension {ext.name} "
                f"({', '.join(ext.sources)}): {cause}; "
                "it needs a C compiler (gcc) and the Python headers (Python.h)\n"
            )
            raise SystemExit(1) from exc


setup(
    ext_modules=[
        Extension(
            "matterfab.matter._pbkdf2",
            [PBKDF2_SOURCE],
            # SHA-NI code is compiled per function (target attributes), so the module still
            # loads, and falls back to portable C, on a CPU without SHA-NI.
            extra_compile_args=["-O3", "-Wall"],
        ),
        Extension(
            "matterfab.matter._qrmask",
            [QRMASK_SOURCE],
            # N4 must round exactly as Python's float expression does: no fused multiply-add.
            extra_compile_args=["-O3", "-Wall", "-ffp-contract=off"],
        ),
    ],
    cmdclass={"build_ext": BuildNative},
)
