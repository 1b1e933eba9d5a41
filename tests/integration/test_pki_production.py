"""Going to production from the command line: `pki csr` in a SoftHSM2 token, a PAA operator
signing the CSR with OpenSSL, `pki add` checking every part; and each bad input refused with
a clear error, no traceback and no profile written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import vectors_path
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab import profiles
from matterfab.matter.attestation import PRODUCT_ID_OID, VENDOR_ID_OID
from tests.hsm_pki import PAI_EXTENSIONS, Paa, Token, make_paa, make_token, matterfab_cli, openssl

pytestmark = pytest.mark.timeout(300)

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN, PIN, PIN_ENV = "matterfab-prod", "13572468", "MATTERFAB_TEST_PROD_PIN"
VID, PID = 0xFFF1, 0x8000
NAME = "acme-prod"


@dataclass
class World:
    """Everything the tests share: token, PAA, the issued PAI and the CD files."""

    base: Path
    token: Token
    paa: Paa
    csr: Path
    pai: Path
    cd: Path
    cd_signing: Path
    profiles: Path
    env: dict[str, str]

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`matterfab` with the token's environment and no object store."""
        return matterfab_cli(*args, env=env or self.env)

    def hsm_args(self, key_label: str = "pai", token: str = TOKEN) -> list[str]:
        """The PKCS#11 key-source options."""
        return ["--pkcs11-module", MODULE, "--token-label", token, "--key-label", key_label,
                "--pin-env", PIN_ENV]  # fmt: skip

    def add_args(self, name: str, **override: str) -> list[str]:
        """`pki add NAME` with the good files unless overridden (pai, paa, cd, cd_signing)."""
        files = {
            "pai": self.pai,
            "paa": self.paa.cert,
            "cd": self.cd,
            "cd_signing": self.cd_signing,
        }
        files.update({k: Path(v) for k, v in override.items()})
        return ["pki", "add", name, "--pai-cert", str(files["pai"]),
                "--paa-cert", str(files["paa"]), "--cd", str(files["cd"]),
                "--cd-signing-cert", str(files["cd_signing"]),
                "--profiles-dir", str(self.profiles)]  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("prod-pki")
    token = make_token(base / "hsm", TOKEN, PIN, PIN_ENV)
    env = {**token.env, "MATTERFAB_HOME": str(base / "no-stack")}
    for var in ("MATTERFAB_S3_ENDPOINT", "MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY"):
        env.pop(var, None)
    paa = make_paa(base / "paa")
    csr = base / "pai.csr"
    world = World(base, token, paa, csr, base / "pai.pem", Path(), Path(), base / "profiles", env)
    done = world.cli("pki", "csr", "--vid", "0xFFF1", "--pid", "0x8000", "--out", str(csr),
                     *world.hsm_args())  # fmt: skip
    assert done.returncode == 0, done.stderr
    paa.sign(csr, world.pai)
    vectors = vectors_path.vectors_dir()
    # The CSA's CD for FFF1/8000..8063 from the Matter SDK, with its signing certificate.
    world.cd = vectors / "Chip-Test-CD-FFF1-8000-8063.der"
    world.cd_signing = vectors / "Chip-Test-CD-Signing-Cert.pem"
    return world


def test_csr_is_signed_by_the_token_and_carries_the_matter_subject(world: World) -> None:
    verified = subprocess.run(
        ["openssl", "req", "-in", str(world.csr), "-noout", "-verify"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "verify OK" in verified.stdout + verified.stderr
    request = x509.load_pem_x509_csr(world.csr.read_bytes())
    for oid, value in ((VENDOR_ID_OID, "FFF1"), (PRODUCT_ID_OID, "8000")):
        (attr,) = request.subject.get_attributes_for_oid(oid)
        assert attr.value == value and attr._type.name == "UTF8String"
    # OpenSSL's parse of the PAI it issued shows the same attributes, still UTF8String.
    parsed = openssl("asn1parse", "-in", str(world.pai))
    assert ":1.3.6.1.4.1.37244.2.1" in parsed and "UTF8STRING        :FFF1" in parsed
    assert ":1.3.6.1.4.1.37244.2.2" in parsed and "UTF8STRING        :8000" in parsed


def test_the_key_never_leaves_the_token(world: World) -> None:
    attrs = world.token.key_attributes("pai")
    assert attrs["EXTRACTABLE"] is False and attrs["SENSITIVE"] is True
    assert attrs["NEVER_EXTRACTABLE"] and attrs["ALWAYS_SENSITIVE"] and attrs["TOKEN"]
    assert attrs["PRIVATE"] and attrs["LOCAL"]  # generated inside the token


def test_add_registers_a_production_profile(world: World) -> None:
    done = world.cli(*world.add_args(NAME), *world.hsm_args())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == str(world.profiles / NAME)
    profile = profiles.load_profile(NAME, world.profiles)
    assert profile.kind == "production" and profile.issues_dacs
    assert (profile.vendor_id, profile.product_id) == (VID, PID)
    assert profile.key_spec == {"type": "pkcs11", "module": MODULE, "token_label": TOKEN,
                                "key_label": "pai", "pin_env": PIN_ENV}  # fmt: skip
    for path in (world.profiles / NAME).iterdir():
        data = path.read_bytes()
        assert PIN.encode() not in data and b"PRIVATE KEY" not in data, path
    shown = world.cli("pki", "show", NAME, "--profiles-dir", str(world.profiles))
    assert shown.returncode == 0, shown.stderr
    assert "kind       production" in shown.stdout
    assert f"key source pkcs11 module {MODULE} token '{TOKEN}' key 'pai' (PIN from ${PIN_ENV})" in (
        shown.stdout
    )
    pai = x509.load_pem_x509_certificate(world.pai.read_bytes())
    assert f"pai valid  {pai.not_valid_before_utc:%Y-%m-%d %H:%M}.." in shown.stdout
    listed = world.cli("pki", "list", "--profiles-dir", str(world.profiles))
    assert f"{NAME}\tproduction\t0xFFF1/0x8000" in listed.stdout.splitlines()
    # The profile issues DACs in the token that OpenSSL chains to the PAA (no stack needed).
    code = (
        "import sys\nfrom datetime import UTC, datetime\n"
        "from matterfab import profiles\nfrom matterfab.matter import attestation\n"
        "from pathlib import Path\n"
        f"p = profiles.load_profile({NAME!r}, Path({str(world.profiles)!r}))\n"
        "d = attestation.issue_dac(pai_cert=p.pai_cert, signer=p.signer(), vendor_id=p.vendor_id,"
        " product_id=p.product_id, not_before=datetime.now(UTC), not_after=None)\n"
        "sys.stdout.buffer.write(d.der)\n"
    )
    dac = subprocess.run(
        [sys.executable, "-c", code],
        env=world.env,
        capture_output=True,
        check=True,
    ).stdout
    dac_pem = world.base / "dac.pem"
    dac_pem.write_bytes(
        x509.load_der_x509_certificate(dac).public_bytes(serialization.Encoding.PEM)
    )
    out = openssl("verify", "-x509_strict", "-CAfile", str(world.paa.cert),
                  "-untrusted", str(world.pai), str(dac_pem))  # fmt: skip
    assert out.strip().endswith(": OK")


def _other_cd(world: World, vid: int, pids: list[int]) -> tuple[Path, Path]:
    der, cert = profiles.make_test_cd(vid, pids)
    path = world.base / f"cd-{vid:04X}-{pids[0]:04X}.der"
    path.write_bytes(der)
    cert_path = path.with_suffix(".pem")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert_path


def _expired_pai(world: World) -> Path:
    # OpenSSL 3.0's `x509 -req` cannot back-date; the PAA's key signs an expired copy instead.
    paa_cert = x509.load_pem_x509_certificate(world.paa.cert.read_bytes())
    paa_key = serialization.load_pem_private_key(world.paa.key.read_bytes(), password=None)
    assert isinstance(paa_key, ec.EllipticCurvePrivateKey)
    good = x509.load_pem_x509_certificate(world.pai.read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(good.subject)
        .issuer_name(paa_cert.subject)
        .public_key(good.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=400))
        .not_valid_after(datetime.now(UTC) - timedelta(days=1))
    )
    for ext in good.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    path = world.base / "pai-expired.pem"
    path.write_bytes(
        builder.sign(paa_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    return path


def _key_file(world: World) -> Path:
    path = world.base / "other-key.pem"
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    return path


def _with_cd(world: World, vid: int, pids: list[int]) -> dict[str, str]:
    cd_path, cert_path = _other_cd(world, vid, pids)
    return {"cd": str(cd_path), "cd_signing": str(cert_path)}


def _other_paa(world: World) -> dict[str, str]:
    return {"paa": str(make_paa(world.base / "paa2", "Other PAA").cert)}


PATHLEN_1 = PAI_EXTENSIONS.replace("pathlen:0", "pathlen:1")


def _pathlen_1(world: World) -> dict[str, str]:
    path = world.paa.sign(world.csr, world.base / "pai-pathlen1.pem", extensions=PATHLEN_1)
    return {"pai": str(path)}


# case: (the `pki add` argv, what stderr must say); `{b}` is the test's base folder.
BAD: dict[str, tuple[Callable[[World], list[str]], str]] = {
    "pai does not chain": (
        lambda w: [*w.add_args("bad", **_other_paa(w)), *w.hsm_args()],
        "error: --pai-cert {b}/pai.pem: does not chain to --paa-cert {b}/paa2/paa.pem: "
        "PAI issuer does not match the PAA's subject",
    ),
    "key does not match (token)": (
        lambda w: [*w.add_args("bad"), *w.hsm_args("other")],
        "error: --key-label other: is not the PAI's key: a test signature made with it does not "
        "verify with the public key of --pai-cert {b}/pai.pem",
    ),
    "key does not match (file)": (
        lambda w: [*w.add_args("bad"), "--key-file", str(_key_file(w))],
        "error: --key-file {b}/other-key.pem: is not the PAI's key: a test signature made with it "
        "does not verify with the public key of --pai-cert {b}/pai.pem",
    ),
    "cd for another vid": (
        lambda w: [*w.add_args("bad", **_with_cd(w, 0xFFF2, [PID])), *w.hsm_args()],
        "error: --cd {b}/cd-FFF2-8000.der: CD vendor_id is 0xFFF2, not the profile's 0xFFF1",
    ),
    "cd for another pid": (
        lambda w: [*w.add_args("bad", **_with_cd(w, VID, [0x8101])), *w.hsm_args()],
        "error: --cd {b}/cd-FFF1-8101.der: CD does not list product_id 0x8000 (it lists 0x8101)",
    ),
    "cd signed by someone else": (
        lambda w: [
            *w.add_args("bad", cd_signing=_with_cd(w, VID, [PID])["cd_signing"]),
            *w.hsm_args(),
        ],
        "error: --cd {cd}: does not verify with the CD signing certificate: CD was signed by key",
    ),
    "expired pai": (
        lambda w: [*w.add_args("bad", pai=str(_expired_pai(w))), *w.hsm_args()],
        "error: --pai-cert {b}/pai-expired.pem: PAI expired on",
    ),
    "pai with path length 1": (
        lambda w: [*w.add_args("bad", **_pathlen_1(w)), *w.hsm_args()],
        "error: --pai-cert {b}/pai-pathlen1.pem: PAI pathLenConstraint must be 0, got 1",
    ),
    "dac validity beyond the pai": (
        lambda w: [*w.add_args("bad"), *w.hsm_args(), "--dac-validity-days", "5000"],
        "error: --dac-validity-days: 5000 days would outlive the PAI (valid until",
    ),
    "wrong pin": (
        lambda w: [*w.add_args("bad"), *w.hsm_args()[:-1], "WRONG_PIN"],
        "error: --pin-env WRONG_PIN: the PIN for token 'matterfab-prod' is wrong",
    ),
    "missing token": (
        lambda w: [*w.add_args("bad"), *w.hsm_args(token="no-such-token")],
        "error: --token-label no-such-token: need exactly one token labelled 'no-such-token'",
    ),
    "missing key label": (
        lambda w: [*w.add_args("bad"), *w.hsm_args("no-such-key")],
        "error: --key-label no-such-key: need exactly one EC key pair labelled 'no-such-key' in "
        "token 'matterfab-prod'",
    ),
}


@pytest.fixture(scope="module")
def other_key_in_token(world: World) -> None:
    """A second P-256 key in the token, made by `pki csr` too: not the PAI's."""
    done = world.cli("pki", "csr", "--vid", "0xFFF1", "--out", str(world.base / "other.csr"),
                     *world.hsm_args("other"))  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_and_nothing_is_written(
    world: World, other_key_in_token: None, case: str
) -> None:
    build, expected = BAD[case]
    env = {**world.env, "WRONG_PIN": "99999999"}
    done = world.cli(*build(world), env=env)
    expected = expected.format(b=world.base, cd=world.cd)
    assert done.returncode == 2, (case, done.stdout, done.stderr)
    assert expected in done.stderr, (case, done.stderr)
    assert "Traceback" not in done.stderr and PIN not in done.stderr
    assert not (world.profiles / "bad").exists()
    print(f"{case}: {done.stderr.strip()}")


def test_csr_bad_inputs(world: World) -> None:
    existing = world.cli("pki", "csr", "--vid", "0xFFF1", "--out", str(world.base / "x.csr"),
                         *world.hsm_args())  # fmt: skip
    assert existing.returncode == 2
    assert "error: --key-label pai: token already holds an object labelled 'pai'" in (
        existing.stderr
    )
    key = world.base / "lab-key.pem"
    made = world.cli("pki", "csr", "--vid", "0xFFF1", "--out", str(world.base / "lab.csr"),
                     "--key-file", str(key))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    request = x509.load_pem_x509_csr((world.base / "lab.csr").read_bytes())
    assert (
        request.public_key()
        == serialization.load_pem_private_key(key.read_bytes(), password=None).public_key()
    )
    again = world.cli("pki", "csr", "--vid", "0xFFF1", "--out", str(world.base / "lab.csr"),
                      "--key-file", str(key))  # fmt: skip
    assert again.returncode == 2
    assert f"error: --key-file {key}: {key} already exists: a key is never overwritten" in (
        again.stderr
    )
    both = world.cli("pki", "csr", "--vid", "1", "--out", str(world.base / "y.csr"),
                     "--key-file", str(key), *world.hsm_args())  # fmt: skip
    assert both.returncode == 2 and "not both" in both.stderr
    bad_vid = world.cli("pki", "csr", "--vid", "0", "--out", str(world.base / "z.csr"),
                        "--key-file", str(world.base / "z.pem"))  # fmt: skip
    assert bad_vid.returncode == 2 and "error: vendor_id: must be 0x0001..0xFFF4" in bad_vid.stderr
    assert not (world.base / "z.pem").exists()


def test_lab_key_file_pin_file_and_an_unverified_cd(world: World) -> None:
    key, csr = world.base / "lab2-key.pem", world.base / "lab2.csr"
    made = world.cli("pki", "csr", "--vid", "0xFFF1", "--pid", "0x8000", "--out", str(csr),
                     "--key-file", str(key))  # fmt: skip
    assert made.returncode == 0, made.stderr
    pai = world.paa.sign(csr, world.base / "lab2-pai.pem")
    args = ["pki", "add", "lab", "--pai-cert", str(pai), "--paa-cert", str(world.paa.cert),
            "--cd", str(world.cd), "--profiles-dir", str(world.profiles)]  # fmt: skip
    key.chmod(0o644)
    loose = world.cli(*args, "--key-file", str(key))
    assert loose.returncode == 2
    assert f"error: --key-file {key}: {key} is readable by group or others (mode 644)" in (
        loose.stderr
    )
    assert not (world.profiles / "lab").exists()
    key.chmod(0o600)
    added = world.cli(*args, "--key-file", str(key))
    assert added.returncode == 0, added.stderr
    assert f"warning: --cd {world.cd} was parsed but its signature was NOT verified" in (
        added.stderr
    )
    profile = profiles.load_profile("lab", world.profiles)
    assert profile.key_spec == {"type": "file", "path": str(key)}
    assert profile.kind == "production" and not (world.profiles / "lab" / "pai-key.pem").exists()

    pin_file = world.base / "pin"
    pin_file.write_text(PIN + "\n")
    hsm = [*world.hsm_args()[:-2], "--pin-file", str(pin_file)]
    env = {k: v for k, v in world.env.items() if k != PIN_ENV}
    by_file = world.cli(*world.add_args("pinfile"), *hsm, env=env)
    assert by_file.returncode == 0, by_file.stderr
    spec = profiles.load_profile("pinfile", world.profiles).key_spec
    assert spec is not None and spec["pin_file"] == str(pin_file) and "pin_env" not in spec
