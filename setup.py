"""The native part of matterfab: PBKDF2-HMAC-SHA256 (matterfab.matter._pbkdf2, issue #26).

Everything else is in pyproject.toml. `pip install -e .` (what `make install` runs) compiles the
extension with the machine's C compiler and puts it beside the sources, so an editable install
imports it. There is no pure-Python fallback: when it cannot be built, the install fails with one
line saying why, instead of a pipeline that silently runs at a fraction of the speed.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "shared/matterfab/matter/_pbkdf2.c"


class BuildNative(build_ext):
    """build_ext whose failure is one line naming the cause."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler missing, headers missing, compile error
            cause = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            sys.stderr.write(
                f"error: cannot build matterfab's native PBKDF2 ({SOURCE}): {cause}; "
                "it needs a C compiler (gcc) and the Python headers (Python.h)\n"
            )
            raise SystemExit(1) from exc


setup(
    ext_modules=[
        Extension(
            "matterfab.matter._pbkdf2",
            [SOURCE],
            # SHA-NI code is compiled per function (target attributes), so the module still
            # loads, and falls back to portable C, on a CPU without SHA-NI.
            extra_compile_args=["-O3", "-Wall"],
        )
    ],
    cmdclass={"build_ext": BuildNative},
)
