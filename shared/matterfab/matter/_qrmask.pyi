"""Native QR Code mask evaluation (_qrmask.c); use matterfab.matter.label."""

MASKS: int
MIN_SIZE: int
MAX_SIZE: int

def scores(size: int, data: bytes, fixed: bytes, masks: bytes) -> tuple[int, ...]: ...
def n4(size: int, dark: int) -> int: ...
