"""Sealing to a line (matterfab/sealing.py): RFC 9180 vectors, the library opens what we seal,
and an object moved to another device, file or key does not open."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from cryptography.hazmat.bindings._rust import openssl as rust_openssl
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from matterfab import ffruns, sealing

# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode,
# sequence number 0 (aad "Count-0").
A11 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "aad": "436f756e742d30",
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "ct": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
    "6d8770ac83d07bea87e13c512a",
}
SECRET = b"s" * 32


def v(name: str) -> bytes:
    return bytes.fromhex(A11[name])


def test_rfc9180_a_1_1_base_mode_vector() -> None:
    pk = X25519PublicKey.from_public_bytes(v("pkRm"))
    out = sealing._seal_with(v("ikmE"), pk, v("info"), v("pt"), v("aad"))
    assert out[: sealing.ENC_SIZE] == v("enc")
    assert out[sealing.ENC_SIZE :] == v("ct")
    # ...and cryptography's own HPKE opens it (its single-shot API fixes aad to b"").
    sk = X25519PrivateKey.from_private_bytes(v("skRm"))
    opened = rust_openssl.hpke._decrypt_with_aad(
        sealing.SUITE, out, sk, info=v("info"), aad=v("aad")
    )
    assert opened == v("pt")


def binding(key: X25519PrivateKey, device: int = 0, file: str = "partition.bin") -> sealing.Binding:
    fp = sealing.fingerprint(key.public_key())
    return sealing.Binding("local", fp, "O-1", f"O-1/{device:07d}", file)


@pytest.fixture(scope="module")
def key() -> X25519PrivateKey:
    return sealing.generate()


def test_seal_is_deterministic_and_the_library_opens_it(key: X25519PrivateKey) -> None:
    b = binding(key)
    blob = sealing.seal(b"NVS" * 1000, key.public_key(), b, SECRET)
    assert blob == sealing.seal(b"NVS" * 1000, key.public_key(), b, SECRET)
    assert blob != sealing.seal(b"NVS" * 1000, key.public_key(), b, b"t" * 32)
    assert blob.startswith(sealing.MAGIC + b.header() + b"\n")
    found, body = sealing.parse(blob)
    assert found == b
    assert sealing.SUITE.decrypt(body, key, b.info()) == b"NVS" * 1000
    assert sealing.open_sealed(blob, key, b) == b"NVS" * 1000
    assert b"NVS" * 4 not in blob


def test_moved_to_another_device_does_not_open(key: X25519PrivateKey) -> None:
    blob = sealing.seal(b"secret partition", key.public_key(), binding(key, 0), SECRET)
    with pytest.raises(sealing.SealError, match=r"sealed for device O-1/0000000, not O-1/0000001"):
        sealing.open_sealed(blob, key, binding(key, 1))
    # A header rewritten to name device 1: the header matches, HPKE's info does not.
    forged = blob.replace(b"O-1/0000000", b"O-1/0000001")
    with pytest.raises(sealing.SealError, match="does not open"):
        sealing.open_sealed(forged, key, binding(key, 1))
    with pytest.raises(sealing.SealError, match=r"sealed as partition\.bin, not nvs_keys\.bin"):
        sealing.open_sealed(blob, key, binding(key, 0, "nvs_keys.bin"))


def test_wrong_key_and_damage_are_clean_errors(key: X25519PrivateKey) -> None:
    b = binding(key)
    blob = sealing.seal(b"secret", key.public_key(), b, SECRET)
    other = sealing.generate()
    with pytest.raises(sealing.SealError, match="which this key is not"):
        sealing.open_sealed(blob, other, b)
    with pytest.raises(sealing.SealError, match="does not open"):
        sealing.open_sealed(blob[:-1] + bytes([blob[-1] ^ 1]), key, b)
    for bad, rule in [
        (b"plain bytes", "not a sealed object"),
        (sealing.MAGIC + b"{", "not terminated"),
        (sealing.MAGIC + b"{}\n" + b"x" * 64, "malformed"),
        (sealing.MAGIC + b.header() + b"\n" + b"x" * 10, "truncated"),
    ]:
        with pytest.raises(sealing.SealError, match=rule):
            sealing.open_sealed(bad, key, b)
    with pytest.raises(sealing.SealError, match="not the key given"):
        sealing.seal(b"x", other.public_key(), b, SECRET)


def test_keys_round_trip_and_only_x25519_is_a_line_key(key: X25519PrivateKey) -> None:
    again = sealing.load_private(sealing.private_pem(key), "k")
    assert sealing.fingerprint(again.public_key()) == sealing.fingerprint(key.public_key())
    pub = sealing.load_public(sealing.public_pem(key.public_key()), "p")
    assert sealing.fingerprint(pub) == sealing.fingerprint(key.public_key())
    assert len(sealing.fingerprint(pub)) == 32
    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    with pytest.raises(sealing.SealError, match="must be an X25519 private key"):
        sealing.load_private(pem, "k.pem")
    with pytest.raises(sealing.SealError, match="not an unencrypted PEM"):
        sealing.load_private(b"junk", "k.pem")


def test_seal_device_bytes_are_pinned() -> None:
    """seal_device's output for fixed inputs (the builder's refs and the stations depend on the
    exact bytes: a faster header must not change them); the header is the dataclass's fields."""
    import hashlib
    import json
    from dataclasses import asdict

    k = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    fp = sealing.fingerprint(k.public_key())
    files = ["partition.bin", "nvs_keys.bin", "esp_secure_cert.bin"]
    objs = [
        (bytes([i]) * (100 + i), sealing.Binding("local", fp, "O-1", "O-1/0000007", f))
        for i, f in enumerate(files)
    ]
    for _, b in objs:
        fields = {n: v for n, v in asdict(b).items() if n != "encoding"}  # named only when set
        assert b.header() == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    out = sealing.seal_device(objs, k.public_key(), b"s" * 32)
    # The digest pinned before encodings existed (issue #26): unencoded objects are unchanged,
    # and so are they when the builder's `elide` finds nothing shorter.
    assert hashlib.sha256(b"".join(out)).hexdigest() == (
        "66b672bd82b676a1d502fa17e80ee25bef729a7142aa738369e99c9ffb0d6b60"
    )
    assert sealing.seal_device(objs, k.public_key(), b"s" * 32, elide=True) == out
    assert [sealing.open_sealed(blob, k, b) for blob, (_, b) in zip(out, objs, strict=True)] == [
        pt for pt, _ in objs
    ]


# ------------------------------------------------------------------ encodings (issue #26)
FLASH = b"\xff" * 4000 + b"NVS entry" * 30 + b"\xff" * 20000  # mostly erased, like a partition
FF_RUNS = b',"encoding":"ff-runs/1"'


def elided(key: X25519PrivateKey, plaintext: bytes = FLASH, device: int = 0) -> bytes:
    """`plaintext` sealed as the builder seals it (0xFF runs elided when shorter)."""
    return sealing.seal_device(
        [(plaintext, binding(key, device))], key.public_key(), SECRET, elide=True
    )[0]


def test_elided_object_is_smaller_names_its_encoding_and_opens_to_the_plaintext(
    key: X25519PrivateKey,
) -> None:
    b = binding(key)
    blob = elided(key)
    assert blob == elided(key)  # deterministic
    found, body = sealing.parse(blob)
    assert found == dataclasses.replace(b, encoding=sealing.FF_RUNS)
    assert FF_RUNS in blob.split(b"\n")[1]
    assert len(blob) < 600 < len(FLASH)
    # What HPKE sealed is the encoded image, under the info that names the encoding.
    assert sealing.SUITE.decrypt(body, key, found.info()) == ffruns.encode(FLASH)
    assert sealing.open_sealed(blob, key, b, len(FLASH)) == FLASH
    assert sealing.open_sealed(blob, key, b) == FLASH  # size from its segments, bounded
    # The expected binding's own encoding is not what opens it: the header's is.
    assert sealing.open_sealed(blob, key, found, len(FLASH)) == FLASH
    assert sealing.mismatch(found, b) is None
    with pytest.raises(sealing.SealError, match=r"ff-runs/1 body is malformed: .*not 24271"):
        sealing.open_sealed(blob, key, b, len(FLASH) + 1)
    # An explicit encoding seals so too, elide or not.
    assert sealing.seal(FLASH, key.public_key(), found, SECRET) == blob


def test_elide_leaves_random_bytes_plain(key: X25519PrivateKey) -> None:
    """Key bytes do not shrink: sealed exactly as without `elide`, no encoding named."""
    b = binding(key, file="efuse_key.bin")
    scalar = bytes(range(1, 33))
    blob = sealing.seal_device([(scalar, b)], key.public_key(), SECRET, elide=True)[0]
    assert blob == sealing.seal(scalar, key.public_key(), b, SECRET)
    assert b"encoding" not in blob.split(b"\n")[1]
    assert sealing.parse(blob)[0].encoding == ""
    assert sealing.open_sealed(blob, key, b, 32) == scalar


def test_a_rewritten_encoding_does_not_open(key: X25519PrivateKey) -> None:
    """The encoding is part of the info: removing, adding or changing it breaks HPKE."""
    b = binding(key)
    blob = elided(key)
    stripped = blob.replace(FF_RUNS, b"", 1)
    assert sealing.parse(stripped)[0] == b
    with pytest.raises(sealing.SealError, match="does not open"):
        sealing.open_sealed(stripped, key, b, len(FLASH))
    plain = sealing.seal(FLASH, key.public_key(), b, SECRET)
    header = b.header()
    added = plain.replace(header, header[:-1] + FF_RUNS + b"}", 1)
    assert sealing.parse(added)[0].encoding == sealing.FF_RUNS
    with pytest.raises(sealing.SealError, match="does not open"):
        sealing.open_sealed(added, key, b, len(FLASH))


def test_unknown_encodings_are_clear_errors(key: X25519PrivateKey) -> None:
    b = binding(key)
    blob = elided(key)
    for other in (b"zlib/1", b""):
        bad = blob.replace(b"ff-runs/1", other, 1)
        with pytest.raises(sealing.SealError, match="unknown encoding"):
            sealing.parse(bad)
        with pytest.raises(sealing.SealError, match="unknown encoding"):
            sealing.open_sealed(bad, key, b, len(FLASH))
    with pytest.raises(sealing.SealError, match="unknown encoding 'zlib/1'"):
        sealing.seal(FLASH, key.public_key(), dataclasses.replace(b, encoding="zlib/1"), SECRET)
    with pytest.raises(sealing.SealError, match="unknown encoding"):
        sealing.decode("zlib/1", b"x", 1)


def test_a_malformed_encoded_body_is_a_clear_error(key: X25519PrivateKey) -> None:
    """Anyone with the public key can seal (base mode): a body that claims 4 GB of 0xFF, or is
    cut short, opens but does not decode, and nothing larger than the size is built."""
    b = dataclasses.replace(binding(key), encoding=sealing.FF_RUNS)
    for body, size, rule in [
        (struct.pack(">II", 0xFFFF_FFFF, 0), 24576, "runs past the 24576-byte image"),
        (struct.pack(">II", 0xFFFF_FFFF, 0), None, "decodes to more than 16777216 bytes"),
        (struct.pack(">II", 10, 5) + b"ab", 15, "truncated literal"),
        (ffruns.encode(FLASH) + b"\0", len(FLASH), "trailing bytes"),
    ]:
        info = b.info()
        blob = info + b"\n" + sealing._seal_with(b"i" * 32, key.public_key(), info, body)
        with pytest.raises(sealing.SealError, match=f"ff-runs/1 body is malformed: .*{rule}"):
            sealing.open_sealed(blob, key, binding(key), size)


def test_an_old_header_still_parses(key: X25519PrivateKey) -> None:
    """A header written before encodings (no `encoding`) parses as unencoded."""
    fp = sealing.fingerprint(key.public_key())
    old = (
        b'{"device_id":"O-1/0000000","file":"partition.bin","key":"%s","line":"local",'
        b'"order_id":"O-1"}' % fp.encode()
    )
    found, _ = sealing.parse(sealing.MAGIC + old + b"\n" + b"x" * 64)
    assert found == binding(key) and found.encoding == ""
    assert found.header() == old
