"""PAI key sources: a PEM file, or a non-extractable key in an HSM through PKCS#11.

A key source spec is what an attestation profile stores (never the key or the PIN itself):
  "file:/path/pai-key.pem"  or  {"type": "file", "path": "/path/pai-key.pem"}
  (an encrypted key file adds "password_env": "VAR" or "password_file": "/run/secrets/pw")
  {"type": "pkcs11", "module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "matterfab",
   "key_label": "pai-fff1", "pin_env": "MATTERFAB_HSM_PIN"}     (or "pin_file": "/run/secrets/pin")
The PIN is read from the environment variable (or the file) the spec names, when the key is
opened, so it never rests in a profile.

Both sources implement `matterfab.matter.attestation.PaiSigner`. This module does I/O (files,
the PKCS#11 module), which is why it lives outside the pure `matterfab.matter` core.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from matterfab.config import named_secret
from matterfab.errors import AttestationError, invalid
from matterfab.matter.attestation import InMemorySigner, PaiSigner

FIELD = "key_source"
DEFAULT_PIN_ENV = "MATTERFAB_HSM_PIN"
_P256_COORDINATE = 32


def read_private_key(
    path: Path, field: str, password: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """A PEM or DER EC private key from a file (encrypted: with `password`); InvalidInput
    naming `field`. (esp-matter-mfg-tool 1.0.29 parses --pwd and never uses it.)"""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise invalid(field, f"cannot read {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=password)
        else:
            key = serialization.load_der_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        if password is None:
            raise invalid(
                field, f"{path} is encrypted: give its password (password_env or password_file)"
            ) from exc
        raise invalid(field, f"{path} is not encrypted: drop its password") from exc
    except ValueError as exc:
        if password is not None:
            raise invalid(field, f"{path}: the password does not decrypt this key") from exc
        raise invalid(field, f"{path} is not an unencrypted PEM/DER private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise invalid(field, f"{path} must hold an EC P-256 key")
    return key


def create_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    """Generate a P-256 key and write it to a new file (PKCS#8 PEM, mode 0600 from the start)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise invalid(
            f"{FIELD}.path", f"{path} already exists: a key is never overwritten"
        ) from exc
    except OSError as exc:
        raise invalid(f"{FIELD}.path", f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def key_file_problem(path: Path) -> str | None:
    """Why a PAI key file is not fit to keep a PAI key (readable by group or others), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if mode & 0o077:
        return f"{path} is readable by group or others (mode {mode & 0o777:o}): chmod 600 it"
    return None


class FilePaiSigner(InMemorySigner):
    """A PAI key read from an unencrypted PEM or DER file (PKCS#8 or SEC1)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, path: Path | None = None):
        super().__init__(private_key)
        self.path = path

    @classmethod
    def from_path(cls, path: Path | str, password: bytes | None = None) -> FilePaiSigner:
        """Load the key at `path`; raise InvalidInput naming the path when it cannot be used."""
        path = Path(path)
        return cls(read_private_key(path, FIELD, password), path)

    def __repr__(self) -> str:
        return f"FilePaiSigner({self.path})"


def _pkcs11() -> Any:
    # Imported lazily: the file key source must work where the PKCS#11 wrapper cannot load.
    import pkcs11

    return pkcs11


class _TokenLogin:
    """The process's one logged-in session on a token, shared by every signer that uses it.

    PKCS#11 login state belongs to the application, not the session: a second C_Login fails
    with CKR_USER_ALREADY_LOGGED_IN, and closing a logged-in session (python-pkcs11 calls
    C_Logout) logs every other session out. So sessions are shared and reference-counted.
    """

    def __init__(self, session: Any, lock: threading.Lock) -> None:
        self.session = session
        self.lock = lock  # the module's lock (see Pkcs11PaiSigner)
        self.users = 0


_LOGINS: dict[tuple[str, str], _TokenLogin] = {}
_MODULE_LOCKS: dict[str, threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def _acquire(module: str, token_label: str, pin: str) -> _TokenLogin:
    pkcs11 = _pkcs11()
    with _REGISTRY_LOCK:
        login = _LOGINS.get((module, token_label))
        if login is None:
            lock = _MODULE_LOCKS.setdefault(module, threading.Lock())
            with lock:
                try:
                    lib = pkcs11.lib(module)
                except (RuntimeError, OSError) as exc:
                    raise invalid(
                        f"{FIELD}.module", f"cannot load PKCS#11 module {module}: {exc}"
                    ) from exc
                try:
                    token = lib.get_token(token_label=token_label)
                except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as exc:
                    raise invalid(
                        f"{FIELD}.token_label", f"need exactly one token labelled '{token_label}'"
                    ) from exc
                try:
                    session = token.open(rw=True, user_pin=pin)
                except (pkcs11.PinIncorrect, pkcs11.PinLenRange) as exc:
                    raise invalid(
                        f"{FIELD}.pin", f"the PIN for token '{token_label}' is wrong"
                    ) from exc
                except pkcs11.PKCS11Error as exc:
                    raise invalid(
                        f"{FIELD}.token_label",
                        f"cannot log in to token '{token_label}' ({type(exc).__name__})",
                    ) from exc
            login = _TokenLogin(session, lock)
            _LOGINS[(module, token_label)] = login
        login.users += 1
        return login


def _release(module: str, token_label: str) -> None:
    with _REGISTRY_LOCK:
        login = _LOGINS.get((module, token_label))
        if login is None:
            return
        login.users -= 1
        if login.users == 0:
            del _LOGINS[(module, token_label)]
            with login.lock:
                login.session.close()


class Pkcs11PaiSigner:
    """A PAI key inside a PKCS#11 token; signs with CKM_ECDSA over a SHA-256 digest.

    CKM_ECDSA_SHA256 is not offered by every token (SoftHSM 2.6.1 lacks it), so the digest is
    computed here and the token signs it, returning raw r||s which is DER-encoded for X.509.

    python-pkcs11 initialises the module with C_Initialize(NULL), which promises it that no two
    threads call in at once (SoftHSM then turns its own locking off), while its calls release
    the GIL. So every call into a module goes through that module's lock.
    """

    def __init__(self, module: str, token_label: str, pin: str, key_label: str) -> None:
        pkcs11 = _pkcs11()
        self.module, self.token_label, self.key_label = module, token_label, key_label
        self._login = _acquire(module, token_label, pin)
        self._closed = False
        try:
            with self._login.lock:
                session = self._login.session
                self._private = session.get_key(
                    object_class=pkcs11.ObjectClass.PRIVATE_KEY,
                    key_type=pkcs11.KeyType.EC,
                    label=key_label,
                )
                public = session.get_key(
                    object_class=pkcs11.ObjectClass.PUBLIC_KEY,
                    key_type=pkcs11.KeyType.EC,
                    label=key_label,
                )
                self._public_key = _public_key_from_token(public)
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
            self.close()
            raise invalid(
                f"{FIELD}.key_label",
                f"need exactly one EC key pair labelled '{key_label}' in token '{token_label}'",
            ) from exc
        except pkcs11.PKCS11Error as exc:
            self.close()
            raise AttestationError(
                f"token '{token_label}' failed reading key '{key_label}' ({type(exc).__name__})"
            ) from exc
        except BaseException:
            self.close()
            raise
        self._mechanism = pkcs11.Mechanism.ECDSA

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The PAI public key, read from the token's public key object."""
        return self._public_key

    def sign_digest(self, digest: bytes) -> bytes:
        """Have the token sign a SHA-256 digest; return a DER Ecdsa-Sig-Value."""
        if len(digest) != 32:
            raise invalid("digest", f"must be a 32-octet SHA-256 digest, got {len(digest)}")
        if self._closed:
            raise AttestationError(f"{self!r} is closed")
        with self._login.lock:
            raw = self._private.sign(digest, mechanism=self._mechanism)
        if len(raw) != 2 * _P256_COORDINATE:
            raise AttestationError(f"token returned a {len(raw)}-octet signature, expected 64")
        r = int.from_bytes(raw[:_P256_COORDINATE], "big")
        s = int.from_bytes(raw[_P256_COORDINATE:], "big")
        return encode_dss_signature(r, s)

    def close(self) -> None:
        """Release the shared token login (the last signer out logs the process out)."""
        if not self._closed:
            self._closed = True
            _release(self.module, self.token_label)

    def __repr__(self) -> str:
        return f"Pkcs11PaiSigner({self.module}, token={self.token_label}, key={self.key_label})"


def _public_key_from_token(public: Any) -> ec.EllipticCurvePublicKey:
    from pkcs11.util.ec import encode_ec_public_key

    key = serialization.load_der_public_key(encode_ec_public_key(public))
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise invalid(f"{FIELD}.key_label", "the token key must be EC P-256")
    return key


def generate_pkcs11_key(
    module: str, token_label: str, pin: str, key_label: str
) -> ec.EllipticCurvePublicKey:
    """Generate a P-256 key pair inside the token (private half sensitive, non-extractable)."""
    pkcs11 = _pkcs11()
    from pkcs11.util.ec import encode_named_curve_parameters

    attr = pkcs11.Attribute
    login = _acquire(module, token_label, pin)
    try:
        with login.lock:
            session = login.session
            if any(True for _ in session.get_objects({attr.LABEL: key_label})):
                raise invalid(
                    f"{FIELD}.key_label", f"token already holds an object labelled '{key_label}'"
                )
            params = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {attr.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            try:
                public, _private = params.generate_keypair(
                    store=True,
                    label=key_label,
                    private_template={attr.SENSITIVE: True, attr.EXTRACTABLE: False},
                )
            except pkcs11.PKCS11Error as exc:
                raise AttestationError(
                    f"token '{token_label}' could not generate a P-256 key ({type(exc).__name__})"
                ) from exc
            return _public_key_from_token(public)
    finally:
        _release(module, token_label)


def _pin_from_env(env_name: str) -> str:
    pin = named_secret(env_name)  # a variable the profile names: read by config
    if not pin:
        raise invalid(f"{FIELD}.pin_env", f"environment variable {env_name} (the HSM PIN) is unset")
    return pin


def read_pin(spec: dict[str, Any]) -> str:
    """The token PIN from the file (`pin_file`) or environment variable (`pin_env`) a spec names."""
    pin_file = spec.get("pin_file")
    if pin_file:
        try:
            pin = Path(str(pin_file)).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise invalid(f"{FIELD}.pin_file", f"cannot read {pin_file}: {reason}") from exc
        if not pin:
            raise invalid(f"{FIELD}.pin_file", f"{pin_file} is empty")
        return pin
    return _pin_from_env(str(spec.get("pin_env") or DEFAULT_PIN_ENV))


def _key_password(spec: dict[str, Any]) -> bytes | None:
    """An encrypted key file's password, from the file or variable the spec names (or None)."""
    if spec.get("password_file"):
        try:
            return Path(str(spec["password_file"])).read_bytes().strip()
        except OSError as exc:
            raise invalid(f"{FIELD}.password_file", f"cannot read: {exc.strerror}") from exc
    if spec.get("password_env"):
        value = named_secret(str(spec["password_env"]))
        if not value:
            raise invalid(
                f"{FIELD}.password_env", f"environment variable {spec['password_env']} is unset"
            )
        return value.encode()
    return None


def load_signer(spec: str | dict[str, Any], base_dir: Path | None = None) -> PaiSigner:
    """Open the PAI key a spec names; relative file paths resolve against `base_dir`."""
    if isinstance(spec, str):
        if not spec.startswith("file:"):
            raise invalid(FIELD, f"string specs must be 'file:<path>', got {spec!r}")
        spec = {"type": "file", "path": spec.removeprefix("file:")}
    kind = spec.get("type")
    if kind == "file":
        path = Path(str(spec.get("path", "")))
        if not str(spec.get("path", "")):
            raise invalid(f"{FIELD}.path", "is required for a file key source")
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return FilePaiSigner.from_path(path, _key_password(spec))
    if kind == "pkcs11":
        missing = [k for k in ("module", "token_label", "key_label") if not spec.get(k)]
        if missing:
            raise invalid(FIELD, f"a pkcs11 key source needs {', '.join(missing)}")
        return Pkcs11PaiSigner(
            module=str(spec["module"]),
            token_label=str(spec["token_label"]),
            pin=read_pin(spec),
            key_label=str(spec["key_label"]),
        )
    raise invalid(f"{FIELD}.type", f"must be 'file' or 'pkcs11', got {kind!r}")
