"""Native PBKDF2-HMAC-SHA256 (_pbkdf2.c); use matterfab.matter.pbkdf2."""

IMPLEMENTATION: str
MAX_PASSWORD_LEN: int
LANES: int

def pbkdf2_hmac_sha256(
    password: bytes, salt: bytes, iterations: int, length: int, *, portable: bool = False
) -> bytes: ...
def sha256(data: bytes, *, portable: bool = False) -> bytes: ...
def compress_chain(count: int, *, portable: bool = False) -> bytes: ...
