"""In-process measurements: the crypto floor and the pure core library, on one core and on all.

Both run the same per-device work in a process pool (one worker per core) so that the numbers
are comparable with the pipeline, whose builder also builds in worker processes.

- pbkdf2: one SPAKE2+ verifier's PBKDF2 (80 bytes: 3 blocks, 6 compressions per iteration) with
  matterfab's native implementation, next to the same number of SHA-256 compressions back to
  back (the native module's own loop, and OpenSSL's bulk SHA-256 through `cryptography` and
  `hashlib`) and to `cryptography`'s and `hashlib`'s PBKDF2: in one process, alternating, best
  of a few rounds each (issue #26).
- floor: what no implementation can avoid per device: PBKDF2-HMAC-SHA256 at the order's
  iteration count, one P-256 key generation (the DAC key) and one ECDSA signature (the PAI
  signing the DAC). Measured with the native PBKDF2 (what the core uses) and, for reference,
  with `cryptography`'s (a newer OpenSSL than `hashlib`'s) and `hashlib`'s.
- core: everything matterfab computes per device, through `matterfab.matter.*`: identity
  (passcode, salt, rotating-ID UID), DAC issuance under a PAI, SPAKE2+ verifier, NVS partition
  image, onboarding codes and the QR label PNG.
- label: the QR label's steps (segno's mask-0 symbol, the native mask choice beside the Python
  reference it replaced, re-masking, the PNG writer), one process (issue #26).

Each worker also reports the CPU time it spent (`time.process_time`, user + system), so a
rate carries CPU ms per device beside wall time: the pipeline's per-process CPU (psutil, also
user + system) is compared with the core's CPU, not with its wall time, which a busy shared
host stretches.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import secrets
import ssl
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import Encoding

from matterfab.matter import pbkdf2 as native

VID, PID = 0xFFF1, 0x8000
TBS_LEN = 420  # about the size of a DAC's TBSCertificate


@dataclass(frozen=True)
class Rate:
    """A throughput measurement."""

    name: str
    devices: int
    seconds: float
    workers: int
    cpu_s: float = 0.0  # CPU time of the workers for these devices (user + system)

    @property
    def per_s(self) -> float:
        """Devices per second."""
        return self.devices / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "devices": self.devices,
            "seconds": round(self.seconds, 3),
            "workers": self.workers,
            "devices_per_s": round(self.per_s, 2),
            "ms_per_device_per_worker": round(1000 * self.seconds * self.workers / self.devices, 3)
            if self.devices
            else None,
            "cpu_s": round(self.cpu_s, 3),
            "cpu_ms_per_device": (
                round(1000 * self.cpu_s / self.devices, 3) if self.devices else None
            ),
        }


# --------------------------------------------------------------------------- per-device work
# Module-level state is per worker process (set up once by `_init_worker`).
_STATE: dict[str, Any] = {}


def _init_worker() -> None:
    from matterfab.matter import attestation, pki

    paa, paa_key = pki.make_paa("bench PAA", VID)
    pai, pai_key = pki.make_pai(paa, paa_key, VID, PID)
    _STATE.update(
        pai=pai,
        pai_der=pai.public_bytes(Encoding.DER),
        pai_key=pai_key,
        signer=attestation.InMemorySigner(pai_key),
        cd=secrets.token_bytes(240),  # stands in for a CD: its bytes are only stored
    )


def floor_device(iterations: int, pbkdf2: str = "native") -> None:
    """The unavoidable crypto of one device: PBKDF2, a P-256 keygen, an ECDSA signature."""
    salt = secrets.token_bytes(32)
    password = (20202021).to_bytes(4, "little")
    if pbkdf2 == "native":
        native.pbkdf2_hmac_sha256(password, salt, iterations, 80)
    elif pbkdf2 == "cryptography":
        PBKDF2HMAC(hashes.SHA256(), 80, salt, iterations).derive(password)
    else:
        hashlib.pbkdf2_hmac("sha256", password, salt, iterations, 80)
    ec.generate_private_key(ec.SECP256R1())
    _STATE["pai_key"].sign(secrets.token_bytes(TBS_LEN), ec.ECDSA(hashes.SHA256()))


def core_device(index: int, iterations: int) -> int:
    """Everything matterfab computes for one device; returns the partition size (a checksum)."""
    from matterfab.matter import attestation, device, identity, nvs

    now = datetime.now(UTC).replace(microsecond=0)
    dac = attestation.issue_dac(
        pai_cert=_STATE["pai"],
        signer=_STATE["signer"],
        vendor_id=VID,
        product_id=PID,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=365),
    )
    factory = nvs.FactoryData(
        discriminator=identity.discriminator_at(0xF00, index),
        iteration_count=iterations,
        salt=identity.generate_salt(),
        verifier=b"",
        dac_cert=dac.der,
        dac_key=dac.private_key_raw,
        dac_pub_key=dac.public_key_raw,
        pai_cert=_STATE["pai_der"],
        cert_dclrn=_STATE["cd"],
        vendor_id=VID,
        product_id=PID,
        vendor_name="matterfab bench",
        product_name="Bench Bulb",
        hardware_version=1,
        hardware_version_string="v1",
        serial_num=f"BENCH{index:08d}",
        mfg_date="2026-11-21",
        rd_id_uid=identity.generate_rd_id_uid(),
    )
    inputs = device.DeviceInputs(
        factory=factory,
        passcode=identity.generate_passcode(),
        flow="standard",
        discovery=("ble",),
        partition_size=0x6000,
    )
    art = device.build_device(inputs)
    return len(art.partition) + len(art.qrcode_png)


def _floor_chunk(count: int, iterations: int, pbkdf2: str) -> tuple[int, float]:
    """Devices done and the CPU seconds this worker spent on them."""
    cpu = time.process_time()
    for _ in range(count):
        floor_device(iterations, pbkdf2)
    return count, time.process_time() - cpu


def _core_chunk(start: int, count: int, iterations: int) -> tuple[int, float]:
    """Devices done and the CPU seconds this worker spent on them."""
    cpu = time.process_time()
    for i in range(start, start + count):
        core_device(i, iterations)
    return count, time.process_time() - cpu


# --------------------------------------------------------------------------- measurements
def _pool(workers: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(workers, initializer=_init_worker)
    # Start every worker (and its PKI) before the clock starts.
    list(pool.map(_warm_sleep, range(workers)))
    return pool


def _warm_sleep(_: int) -> int:
    time.sleep(0.2)  # long enough that each worker gets one
    return os.getpid()


def _chunks(total: int, parts: int) -> list[tuple[int, int]]:
    """(start, count) for `parts` nearly equal slices of `total` devices; small slices balance."""
    size = max(1, min(50, total // (parts * 4) or 1))
    return [(s, min(size, total - s)) for s in range(0, total, size)]


def measure_floor(
    devices: int, workers: int, iterations: int = 10000, pbkdf2: str = "native"
) -> Rate:
    """Devices/s of the crypto floor with `workers` processes."""
    with _pool(workers) as pool:
        pool.submit(_floor_chunk, 1, iterations, pbkdf2).result()
        started = time.perf_counter()
        futures = [
            pool.submit(_floor_chunk, n, iterations, pbkdf2) for _, n in _chunks(devices, workers)
        ]
        chunks = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
    done, cpu = sum(n for n, _ in chunks), sum(c for _, c in chunks)
    return Rate(f"floor-{pbkdf2}", done, elapsed, workers, cpu)


def measure_core(devices: int, workers: int, iterations: int = 10000) -> Rate:
    """Devices/s of the full per-device core work with `workers` processes."""
    with _pool(workers) as pool:
        pool.submit(_core_chunk, 0, 2, iterations).result()  # imports, caches
        started = time.perf_counter()
        futures = [pool.submit(_core_chunk, s, n, iterations) for s, n in _chunks(devices, workers)]
        chunks = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
    done, cpu = sum(n for n, _ in chunks), sum(c for _, c in chunks)
    return Rate(f"core-{workers}", done, elapsed, workers, cpu)


VERIFIER_LEN = 80  # bytes of PBKDF2 output in a SPAKE2+ verifier: 3 SHA-256 blocks


def measure_pbkdf2(iterations: int = 10000, rounds: int = 30) -> dict[str, Any]:
    """One verifier's PBKDF2 against the same number of SHA-256 compressions, in ms.

    Every contender runs once per round, in turn, so all see the same neighbours' load; the
    best round of each is kept (the machine's speed, not the neighbours', is what is compared).
    `compressions` is 2 per iteration (HMAC's inner and outer hash) for each of the 3 blocks.
    """
    blocks = -(-VERIFIER_LEN // 32)
    compressions = 2 * blocks * iterations
    bulk = bytes(64 * compressions)  # OpenSSL's bulk SHA-256 over as many 64-byte blocks
    password, salt = (20202021).to_bytes(4, "little"), secrets.token_bytes(32)

    def crypto_bulk() -> None:
        h = hashes.Hash(hashes.SHA256())
        h.update(bulk)
        h.finalize()

    contenders: dict[str, Any] = {
        "native": lambda: native.pbkdf2_hmac_sha256(password, salt, iterations, VERIFIER_LEN),
        "compressions_native_loop": lambda: native.compress_chain(compressions),
        "compressions_openssl_cryptography": crypto_bulk,
        "compressions_openssl_hashlib": lambda: hashlib.sha256(bulk).digest(),
        "cryptography": lambda: PBKDF2HMAC(hashes.SHA256(), VERIFIER_LEN, salt, iterations).derive(
            password
        ),
        "hashlib": lambda: hashlib.pbkdf2_hmac("sha256", password, salt, iterations, VERIFIER_LEN),
    }
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, work in contenders.items():
            started = time.perf_counter()
            work()
            best[name] = min(best[name], time.perf_counter() - started)
    started = time.perf_counter()  # the extension's portable C path, once (reference)
    native.pbkdf2_hmac_sha256(password, salt, iterations, VERIFIER_LEN, impl="portable")
    portable_s = time.perf_counter() - started
    ms = {name: round(1000 * s, 4) for name, s in best.items()}
    limit = min(ms[k] for k in ms if k.startswith("compressions_"))
    from cryptography.hazmat.backends.openssl import backend

    return {
        "implementation": native.IMPLEMENTATION,
        "described": native.describe(),
        "iterations": iterations,
        "length": VERIFIER_LEN,
        "compressions": compressions,
        "rounds": rounds,
        "ms": {**ms, "native_portable": round(1000 * portable_s, 4)},
        # the fastest way this machine has to do `compressions` compressions back to back
        "compressions_limit_ms": limit,
        "native_over_compressions": round(ms["native"] / limit, 3),
        "native_over_native_loop": round(ms["native"] / ms["compressions_native_loop"], 3),
        "openssl_bulk_gb_per_s": round(
            len(bulk) / ms["compressions_openssl_cryptography"] / 1e6, 2
        ),
        "openssl": {"cryptography": backend.openssl_version_text(), "hashlib": ssl.OPENSSL_VERSION},
        "cryptography_over_native": round(ms["cryptography"] / ms["native"], 2),
        "hashlib_over_native": round(ms["hashlib"] / ms["native"], 2),
    }


def breakdown(samples: int = 50, iterations: int = 10000) -> dict[str, float]:
    """Milliseconds per device of each step of the core work, in this process (one core)."""
    from matterfab.matter import attestation, device, label, nvs, spake2p

    if not _STATE:
        _init_worker()
    now = datetime.now(UTC).replace(microsecond=0)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        started = time.perf_counter()
        value = fn()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        return value

    for i in range(samples):
        dac = timed(
            "dac_issue",
            lambda: attestation.issue_dac(
                pai_cert=_STATE["pai"],
                signer=_STATE["signer"],
                vendor_id=VID,
                product_id=PID,
                not_before=now,
                not_after=None,
            ),
        )
        salt = secrets.token_bytes(32)
        passcode = 20202021 + i
        verifier = timed("verifier", lambda: spake2p.compute_verifier(passcode, salt, iterations))  # noqa: B023
        factory = nvs.FactoryData(
            discriminator=i % 4096,
            iteration_count=iterations,
            salt=salt,
            verifier=verifier,
            dac_cert=dac.der,
            dac_key=dac.private_key_raw,
            dac_pub_key=dac.public_key_raw,
            pai_cert=_STATE["pai_der"],
            cert_dclrn=_STATE["cd"],
            vendor_id=VID,
            product_id=PID,
            serial_num=f"B{i}",
            mfg_date="2026-11-21",
        )
        timed("nvs_image", lambda: nvs.build_partition(factory, 0x6000))  # noqa: B023
        qr, _ = device.onboarding_codes(VID, PID, "standard", ("ble",), i % 4096, passcode)
        timed("qr_png", lambda: label.qr_png(qr))  # noqa: B023
    return {k: round(1000 * v / samples, 3) for k, v in timings.items()}


def label_breakdown(samples: int = 300) -> dict[str, float]:
    """Milliseconds per label of each step of `label._symbol` and `qr_png`, in this process.

    Random Matter payloads (fixed seed); `symbol` is the whole cached step (decode, mask-0
    symbol, mask choice, re-mask), then its parts: `make_qr_mask0` (segno), `best_mask` (the
    native scorer, what `_symbol` runs), `best_mask_python` (label._best_mask, the reference it
    replaced, issue #26), `remask`; `png` is the PNG writer alone.
    """
    from matterfab.matter import device, identity, label

    rnd = random.Random(26)
    payloads = []
    for i in range(samples):
        passcode = 20202021 + i
        assert passcode not in identity.INVALID_PASSCODES
        payloads.append(
            device.onboarding_codes(
                rnd.randint(1, 0xFFF4),
                rnd.randint(1, 0xFFFF),
                rnd.choice(["standard", "user-intent", "custom"]),
                ("ble",),
                rnd.randint(0, 4095),
                passcode,
            )[0]
        )

    def per_label(fn: Any, items: list[Any]) -> float:
        started = time.perf_counter()
        for item in items:
            fn(item)
        return round(1000 * (time.perf_counter() - started) / len(items), 4)

    def symbol(qr: str) -> None:
        label._symbol.cache_clear()
        label._symbol(qr)

    masked_0 = [label._make(qr, 0) for qr in payloads]
    chosen = [label._best_mask_native(s.matrix) for s in masked_0]
    to_remask = [(copy.deepcopy(s), mask) for s, mask in zip(masked_0, chosen, strict=True)]
    finished = [s for s, _ in to_remask]
    timings = {
        "symbol": per_label(symbol, payloads),
        "make_qr_mask0": per_label(lambda qr: label._make(qr, 0), payloads),
        "best_mask": per_label(lambda s: label._best_mask_native(s.matrix), masked_0),
        "best_mask_python": per_label(lambda s: label._best_mask(s.matrix), masked_0),
        "remask": per_label(lambda pair: label._remask(*pair), to_remask),
        "png": per_label(lambda s: label._png(s.matrix, 4, 2), finished),
    }
    label._symbol.cache_clear()
    return timings
