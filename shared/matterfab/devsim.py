"""A device simulator for `dac_storage: device-key`: it stands where the chip stands.

    python -m matterfab.devsim csr   --state DIR --device {device_id} [--mac {mac}]
    python -m matterfab.devsim write --state DIR --device {device_id} --dac {dac} --pai {pai}
                                     [--secure-cert {secure_cert}]

Each device is a folder under `--state` (its id with `/` as `_`). `csr` makes the device's
P-256 key there on first use (as the chip does in its own flash; the key never leaves the
folder), prints firmware-like log lines and a PEM CSR signed with that key. `write` accepts
the certificate write: the DAC must be over the device's own key and chain to the PAI, and the
esp_secure_cert image (if given) must hold exactly that DAC and PAI and no key entry; else it
prints one line and exits 1. It stores `dac.der` and `pai.der` beside the key.

Faults a real chip may show, for tests (`csr` only): `--fault forge` (a broken self-signature),
`p384` (a key on another curve), `none` (no CSR printed), `two` (two CSRs), and
`--key-of DEVICE` (present another device's key: a cloned chip).
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import attestation, csr, secure_cert

FAULTS = ("forge", "p384", "none", "two")


def device_dir(state: Path, device: str) -> Path:
    """A device's own folder (its flash)."""
    return state / device.replace("/", "_")


def _key(folder: Path, curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
    path = folder / ("key.pem" if isinstance(curve, ec.SECP256R1) else f"key-{curve.name}.pem")
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> str:
    """A PEM PKCS#10 request for `key`, signed by it."""
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM).decode()


def forge(pem: str) -> str:
    """The same request with one bit of its signature flipped."""
    req = x509.load_pem_x509_csr(pem.encode())
    der = bytearray(req.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature's INTEGER s
    lines = base64.encodebytes(bytes(der)).decode().replace("\n", "")
    wrapped = "\n".join(lines[i : i + 64] for i in range(0, len(lines), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{wrapped}\n-----END CERTIFICATE REQUEST-----\n"


def cmd_csr(args: argparse.Namespace) -> int:
    """Print boot logs and the device's CSR."""
    state = Path(args.state)
    owner = args.key_of or args.device
    curve: ec.EllipticCurve = ec.SECP384R1() if args.fault == "p384" else ec.SECP256R1()
    key = _key(device_dir(state, owner), curve)
    pem = make_csr(key, "matterfab-devsim")
    if args.fault == "forge":
        pem = forge(pem)
    print("I (312) cpu_start: Starting scheduler on PRO CPU.")
    print(f"I (420) devsim: device {args.device} mac {args.mac or '-'}")
    print("I (431) esp_matter_attestation: generating device key in secure storage")
    print("I (433) esp_matter_attestation: CSR follows")
    if args.fault != "none":
        print(pem, end="")
    if args.fault == "two":
        print(make_csr(key, "matterfab-devsim-2"), end="")
    print("I (470) esp_matter_attestation: waiting for DAC")
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    """Accept the DAC if it is over this device's key; exit 1 with one line otherwise."""
    folder = device_dir(Path(args.state), args.device)
    key_path = folder / "key.pem"
    if not key_path.exists():
        print(f"devsim: device {args.device} has no key: run csr first", file=sys.stderr)
        return 1
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    dac_der = Path(args.dac).read_bytes()
    pai_der = Path(args.pai).read_bytes()
    if not csr.dac_over_key(dac_der, csr.public_key_raw(key.public_key())):
        print(f"devsim: refused: the DAC is not over device {args.device}'s key", file=sys.stderr)
        return 1
    try:
        attestation.verify_dac(
            x509.load_der_x509_certificate(dac_der), x509.load_der_x509_certificate(pai_der)
        )
    except (ValueError, AttestationError) as exc:
        print(f"devsim: refused: the DAC does not chain to the PAI: {exc}", file=sys.stderr)
        return 1
    if args.secure_cert:
        try:
            entries = secure_cert.decode_entries(Path(args.secure_cert).read_bytes())
        except InvalidInput as exc:
            print(f"devsim: refused: bad esp_secure_cert image: {exc}", file=sys.stderr)
            return 1
        kinds = {e.type: e.data for e in entries}
        if (
            kinds.get(secure_cert.TlvType.DEV_CERT) != dac_der
            or kinds.get(secure_cert.TlvType.CA_CERT) != pai_der
            or secure_cert.TlvType.PRIV_KEY in kinds
        ):
            print(
                "devsim: refused: esp_secure_cert must hold the DAC, the PAI, no key",
                file=sys.stderr,
            )
            return 1
    for name, data in (("dac.der", dac_der), ("pai.der", pai_der)):
        (folder / name).write_bytes(data)
    print(f"I (900) esp_matter_attestation: DAC written ({len(dac_der)} bytes)")
    return 0


def parser() -> argparse.ArgumentParser:
    """The simulator's command line."""
    p = argparse.ArgumentParser(
        prog="python -m matterfab.devsim", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("csr", help="print boot logs and the device's CSR")
    c.add_argument("--state", required=True)
    c.add_argument("--device", required=True)
    c.add_argument("--mac")
    c.add_argument("--fault", choices=FAULTS)
    c.add_argument("--key-of", help="present this other device's key (a cloned chip)")
    c.set_defaults(run=cmd_csr)
    w = sub.add_parser("write", help="write the DAC (refused unless over the device's key)")
    w.add_argument("--state", required=True)
    w.add_argument("--device", required=True)
    w.add_argument("--dac", required=True)
    w.add_argument("--pai", required=True)
    w.add_argument("--secure-cert")
    w.set_defaults(run=cmd_write)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
