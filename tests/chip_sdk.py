"""The Matter SDK's own setup-payload code (home-assistant-chip-core), loaded for tests.

`chip.native.Init()` starts the whole controller stack; payload parsing and generation never
use it, so the handle is taken uninitialised. Importing `chip` needs Debian's libnl-3-200 and
libnl-route-3-200 (`make apt`): when it cannot load, tests fail rather than skip.
"""

from __future__ import annotations

import ctypes
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


# The SDK's own attestation-certificate checks (src/crypto/CHIPCryptoPALOpenSSL.cpp), called
# through their exported C++ symbols: `VerifyAttestationCertificateFormat(const ByteSpan &,
# AttestationCertType)` (the DAC/PAI/PAA profile of Matter Core spec §6.2.2) and
# `ValidateCertificateChain(root, rootLen, ca, caLen, leaf, leafLen, result &)`. Both return a
# CHIP_ERROR, which this build returns through a hidden result pointer (measured: reading it
# from registers crashes), so it is passed as the first argument.
_FORMAT = (
    "_ZN4chip6Crypto34VerifyAttestationCertificateFormatERKNS_4SpanIKhEENS0_19AttestationCertTypeE"
)
_CHAIN = (
    "_ZN4chip6Crypto24ValidateCertificateChainEPKhmS2_mS2_mRNS0_32CertificateChainValidationResultE"
)
CERT_TYPES = {"paa": 0, "pai": 1, "dac": 2}  # chip::Crypto::AttestationCertType


class _Span(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


def _library() -> Any:
    import chip.native

    return chip.native.GetLibraryHandle(chip.native.HandleFlags(0))


def chip_certificate_format_error(der: bytes, kind: str) -> int:
    """CHIP_ERROR code of VerifyAttestationCertificateFormat (0: a conforming `kind` cert)."""
    fn = getattr(_library(), _FORMAT)
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Span), ctypes.c_int]
    error = ctypes.create_string_buffer(64)
    data = ctypes.create_string_buffer(der, len(der))
    span = _Span(ctypes.cast(data, ctypes.c_void_p), len(der))
    fn(ctypes.cast(error, ctypes.c_void_p), ctypes.byref(span), CERT_TYPES[kind])
    return int.from_bytes(error.raw[:4], "little")


def chip_chain_error(paa: bytes, pai: bytes, dac: bytes) -> tuple[int, int]:
    """(CHIP_ERROR code, CertificateChainValidationResult) of ValidateCertificateChain; (0, 0)
    when the DAC chains to the PAA through the PAI."""
    fn = getattr(_library(), _CHAIN)
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p] + [ctypes.c_char_p, ctypes.c_size_t] * 3
    fn.argtypes += [ctypes.POINTER(ctypes.c_int)]
    error = ctypes.create_string_buffer(64)
    result = ctypes.c_int(-1)
    fn(ctypes.cast(error, ctypes.c_void_p), paa, len(paa), pai, len(pai), dac, len(dac),
       ctypes.byref(result))  # fmt: skip
    return int.from_bytes(error.raw[:4], "little"), result.value
