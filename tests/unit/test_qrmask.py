"""The native QR mask evaluation (_qrmask.c) against label._penalty, its Python reference (#26).

Every check compares all eight masks' scores: over 5,000 Matter payloads built with
matterfab.matter.payload, random bit matrices of every size 21..57 (versions 1..10), lines made
to hit N3's search and light-area quirks, a Hypothesis property, and known answers; N4 for every
dark count of every size the extension accepts. Malformed input raises ValueError.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from segno import encoder

from matterfab.matter import _qrmask, identity, label, payload

SIZES = range(21, 58, 4)  # versions 1..10
ALL_SIZES = range(_qrmask.MIN_SIZE, _qrmask.MAX_SIZE + 1, 4)  # every size the extension takes


def random_payload(rnd: random.Random) -> str:
    """A Matter QR payload with every field random (encode_qr validates each)."""
    while True:
        passcode = rnd.randint(1, 99999998)
        if passcode not in identity.INVALID_PASSCODES:
            break
    setup = payload.SetupPayload(
        vendor_id=rnd.randint(1, payload.VENDOR_ID_MAX),
        product_id=rnd.randint(1, payload.PRODUCT_ID_MAX),
        flow=rnd.choice(list(payload.CommissioningFlow)),
        discovery=payload.Discovery(rnd.randint(0, 0x3F)),  # any of the defined bits 0..5
        discriminator=rnd.randint(0, 4095),
        passcode=passcode,
    )
    return payload.encode_qr(setup)


def python_scores(
    size: int, data: list[int], fixed: list[int], masks: list[list[int]]
) -> list[int]:
    """label._penalty of fixed | (data ^ mask) for each mask (rows as ints)."""
    return [
        label._penalty([fixed[i] | (data[i] ^ mask[i]) for i in range(size)], size)
        for mask in masks
    ]


def native_scores(
    size: int, data: list[int], fixed: list[int], masks: list[list[int]]
) -> tuple[int, ...]:
    """_qrmask.scores of the same rows, one byte per module."""
    return _qrmask.scores(
        size,
        label._module_bytes(data, size),
        label._module_bytes(fixed, size),
        b"".join(label._module_bytes(mask, size) for mask in masks),
    )


def random_rows(rnd: random.Random, size: int, density: float) -> list[int]:
    """Rows as ints with each module dark with probability `density`."""
    return [sum(1 << j for j in range(size) if rnd.random() < density) for _ in range(size)]


def layout_lists(size: int) -> tuple[tuple[int, ...], list[int], list[list[int]]]:
    region, fixed, masks = label._layout(size)
    return region, list(fixed), [list(mask) for mask in masks]


# ------------------------------------------------------------------------------ Matter payloads
def test_5000_matter_payloads_score_as_the_python_reference() -> None:
    rnd = random.Random(2026_12_07)
    chosen = set()
    sizes = set()
    ties = 0
    for _ in range(5_000):
        matrix = label._make(random_payload(rnd), 0).matrix
        size = len(matrix)
        sizes.add(size)
        region, fixed, masks = layout_lists(size)
        data = [(label._row_int(row) ^ masks[0][i]) & region[i] for i, row in enumerate(matrix)]
        expected = python_scores(size, data, fixed, masks)
        got = label._mask_scores(matrix)
        assert list(got) == expected, matrix
        best = label._best_mask_native(matrix)
        assert best == expected.index(min(expected))  # the first of the lowest
        chosen.add(best)
        ties += expected.count(min(expected)) > 1
    assert sizes == {25}  # a Matter payload (22 alphanumeric characters at M) is version 2
    # Every mask but one wins somewhere (mask 2, j % 3 == 0, is rare for these payloads), and
    # ties for the lowest score happen, so the tie rule is exercised.
    assert len(chosen) >= 7 and ties > 0, (chosen, ties)


def test_native_scores_equal_segnos_own_evaluation() -> None:
    # The third opinion: segno's encoder.evaluate_mask on each candidate symbol.
    rnd = random.Random(11)
    for _ in range(20):
        matrix = label._make(random_payload(rnd), 0).matrix
        size = len(matrix)
        region, fixed, masks = layout_lists(size)
        data = [(label._row_int(row) ^ masks[0][i]) & region[i] for i, row in enumerate(matrix)]
        for number, score in enumerate(label._mask_scores(matrix)):
            rows = [fixed[i] | (data[i] ^ masks[number][i]) for i in range(size)]
            candidate = tuple(bytearray(int(c) for c in format(r, f"0{size}b")) for r in rows)
            assert score == encoder.evaluate_mask(candidate, size, size)


# --------------------------------------------------------------------------- random matrices
@pytest.mark.parametrize("size", SIZES)
def test_random_data_in_the_real_layout(size: int) -> None:
    # The symbol's own function patterns and masks, random data at several densities.
    rnd = random.Random(size)
    region, fixed, masks = layout_lists(size)
    for case in range(60):
        density = (0.5, 0.1, 0.9, rnd.random())[case % 4]
        data = [r & region[i] for i, r in enumerate(random_rows(rnd, size, density))]
        assert list(native_scores(size, data, fixed, masks)) == python_scores(
            size, data, fixed, masks
        )


@pytest.mark.parametrize("size", SIZES)
def test_random_bit_matrices(size: int) -> None:
    # Nothing of a QR layout: random data, fixed modules and "masks" (the scorer's arithmetic
    # fixed | (data ^ mask) and its rules on any matrix).
    rnd = random.Random(1000 + size)
    for case in range(40):
        density = (0.5, 0.05, 0.95, rnd.random())[case % 4]
        data = random_rows(rnd, size, density)
        fixed = random_rows(rnd, size, rnd.choice((0.0, 0.05, 0.3)))
        masks = [random_rows(rnd, size, rnd.random()) for _ in range(8)]
        assert list(native_scores(size, data, fixed, masks)) == python_scores(
            size, data, fixed, masks
        )


# Lines that hit N3's rules: a pattern at either end, with light or dark around it (4 modules
# or fewer), overlapping matches (the search resumes at match + 4 when the light area is
# missing), and N1 runs of exactly 4, 5 and 6.
N3_PIECES = [
    "1011101",
    "10111011101",
    "101110111011101",
    "00001011101",
    "10111010000",
    "000010111010000",
    "11011101",
    "1011101011101",
    "0000",
    "000",
    "1111",
    "00000",
    "111111",
    "0",
    "1",
    "01",
]


def line_of(pieces: list[str], size: int) -> int:
    bits = ("".join(pieces) * (size // 7 + 1))[:size]
    return int(bits, 2)


@pytest.mark.parametrize("size", SIZES)
def test_finder_like_quirks(size: int) -> None:
    rnd = random.Random(size * 7)
    zero = [0] * size
    for _ in range(40):
        rows = [line_of(rnd.choices(N3_PIECES, k=6), size) for _ in range(size)]
        if rnd.random() < 0.5:  # the same lines as columns, or one line repeated (down too)
            rows = [rows[0]] * size if rnd.random() < 0.2 else label._transpose(rows, size)
        masks = [zero] * 7 + [random_rows(rnd, size, 0.5)]
        assert list(native_scores(size, rows, zero, masks)) == python_scores(
            size, rows, zero, masks
        )


def test_known_answers() -> None:
    # All light, 21 x 21: N1 42 lines of 21 modules (19 each), N2 20 * 20 blocks (3 each),
    # N4 |0 % - 50| / 5 -> 10 (100).
    size, n = 21, 21 * 21
    blank = 42 * 19 + 20 * 20 * 3 + 100
    assert _qrmask.scores(size, bytes(n), bytes(n), bytes(8 * n)) == (blank,) * 8
    # Mask 3 alone darkens 1011101 at the left of row 0. N1: row 0 ends in 14 light (12), rows
    # 1..20 (20 * 19), columns 0, 2, 3, 4, 6 end in 20 light (5 * 18), the others (16 * 19).
    # N2: row 0's light pairs (7,8)..(19,20) over row 1 (13), rows 1..20 (19 * 20). N3: the
    # pattern touches the line's end (40). N4: 5 dark of 441 = 1.13 %, int(48.87 / 5) = 9.
    row0 = bytes([1, 0, 1, 1, 1, 0, 1]) + bytes(14)
    masks = bytes(3 * n) + row0 + bytes(n - size) + bytes(4 * n)
    mask3 = (12 + 20 * 19 + 5 * 18 + 16 * 19) + 3 * (13 + 19 * 20) + 40 + 90
    assert mask3 == 2095
    assert _qrmask.scores(size, bytes(n), bytes(n), masks) == (blank,) * 3 + (mask3,) + (blank,) * 4


def checkerboard_with_light(size: int, flips: int) -> bytes:
    """Data that an all-dark mask turns into a checkerboard (dark where i + j is even: no N1 run,
    N2 block or N3 pattern) with `flips` of its dark modules made light, 4 modules apart: that
    adds no run of 5, no 2x2 block and, never adding dark, no 1011101."""
    data = bytearray((i + j) % 2 for i in range(size) for j in range(size))
    spots = [(i, j) for i in range(0, size, 4) for j in range(0, size, 4)]
    assert flips <= len(spots)
    for i, j in spots[:flips]:
        data[i * size + j] = 1  # light once masked
    return bytes(data)


@pytest.mark.parametrize("flips", [0, 1, 162, 163, 200, 225])
def test_n4_is_what_the_scores_use(flips: int) -> None:
    # Size 57: 1,625 dark of 3,249 when no module is flipped; 45 % is crossed between 162 and 163
    # flips (1,463 dark: 45.03 %, N4 0; 1,462: 44.998 %, N4 10).
    size, n = 57, 57 * 57
    data = checkerboard_with_light(size, flips)
    dark = n - sum(data)
    scores = _qrmask.scores(size, data, bytes(n), bytes([1]) * (8 * n))
    assert scores == (_qrmask.n4(size, dark),) * 8
    assert scores[0] == 10 * int(abs(float(dark) / (size**2) * 100 - 50) / 5)
    assert scores[0] == (10 if flips >= 163 else 0)


# ------------------------------------------------------------------------------------- N4
def test_n4_for_every_dark_count_of_every_size() -> None:
    for size in ALL_SIZES:
        total = size**2
        for dark in range(total + 1):
            expected = 10 * int(abs(float(dark) / (size**2) * 100 - 50) / 5)
            assert _qrmask.n4(size, dark) == expected, (size, dark)


# -------------------------------------------------------------------------- property test
@st.composite
def symbols(draw: st.DrawFn) -> tuple[int, list[int], list[int], list[list[int]]]:
    """A size, data, fixed modules and eight masks: a few drawn lines (N3 pieces or any bits),
    repeated and rotated over the matrix, in the real layout or in none."""
    size = draw(st.sampled_from(list(SIZES)))
    full = (1 << size) - 1
    line = st.one_of(
        st.lists(st.sampled_from(N3_PIECES), min_size=1, max_size=8).map(
            lambda pieces: line_of(pieces, size)
        ),
        st.integers(0, full),
        st.sampled_from([0, full]),
    )

    def matrix() -> list[int]:
        lines = draw(st.lists(line, min_size=1, max_size=4))
        step = draw(st.integers(0, size - 1))
        rotated = [(i * step) % size for i in range(size)]
        return [
            ((r << k) | (r >> (size - k))) & full if k else r
            for r, k in ((lines[i % len(lines)], rotated[i]) for i in range(size))
        ]

    data = matrix()
    kind = draw(st.sampled_from(["layout", "none", "random"]))
    region, layout_fixed, layout_masks = layout_lists(size)
    if kind == "layout":
        return size, [d & region[i] for i, d in enumerate(data)], layout_fixed, layout_masks
    fixed = [0] * size if kind == "none" else matrix()
    return size, data, fixed, [matrix() for _ in range(8)]


@settings(max_examples=200, deadline=None)
@given(symbol=symbols())
def test_property_native_equals_python(
    symbol: tuple[int, list[int], list[int], list[list[int]]],
) -> None:
    size, data, fixed, masks = symbol
    assert list(native_scores(size, data, fixed, masks)) == python_scores(size, data, fixed, masks)


# --------------------------------------------------------------------------- bad input
N = 25 * 25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((20, bytes(400), bytes(400), bytes(3200)), "size: must be a QR Code symbol size"),
        ((23, bytes(529), bytes(529), bytes(8 * 529)), "size: must be a QR Code symbol size"),
        ((17, bytes(289), bytes(289), bytes(8 * 289)), "size: must be a QR Code symbol size"),
        ((181, bytes(0), bytes(0), bytes(0)), "size: must be a QR Code symbol size"),
        ((0, b"", b"", b""), "size: must be a QR Code symbol size"),
        ((-3, b"", b"", b""), "size: must be a QR Code symbol size"),
        ((2**70, b"", b"", b""), "size: must be a QR Code symbol size"),
        ((-(2**70), b"", b"", b""), "size: must be a QR Code symbol size"),
        ((25, bytes(N - 1), bytes(N), bytes(8 * N)), "data: must be 625 bytes"),
        ((25, bytes(N + 1), bytes(N), bytes(8 * N)), "data: must be 625 bytes"),
        ((25, b"", bytes(N), bytes(8 * N)), "data: must be 625 bytes"),
        ((25, bytes(N), bytes(N - 25), bytes(8 * N)), "fixed: must be 625 bytes"),
        ((25, bytes(N), bytes(N), bytes(7 * N)), "masks: must be 5000 bytes"),
        ((25, bytes(N), bytes(N), bytes(8 * N + 1)), "masks: must be 5000 bytes"),
        ((25, bytes(N), bytes(N), bytes(N)), "masks: must be 5000 bytes"),
        ((25, b"\x02" + bytes(N - 1), bytes(N), bytes(8 * N)), "data: every module must be 0 or 1"),
        ((25, bytes(N), bytes(N - 1) + b"1", bytes(8 * N)), "fixed: every module must be 0 or 1"),
        ((25, bytes(N), bytes(N), bytes(8 * N - 1) + b"\xff"), "masks: every module must be 0"),
    ],
)
def test_malformed_input_is_a_value_error(
    args: tuple[int, bytes, bytes, bytes], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _qrmask.scores(*args)


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError):
        _qrmask.scores("25", bytes(N), bytes(N), bytes(8 * N))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _qrmask.scores(25.0, bytes(N), bytes(N), bytes(8 * N))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _qrmask.scores(25, "0" * N, bytes(N), bytes(8 * N))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _qrmask.scores(25, bytes(N), bytes(N))  # type: ignore[call-arg]


def test_n4_refuses_what_no_symbol_has() -> None:
    with pytest.raises(ValueError, match=r"dark: must be in 0..625"):
        _qrmask.n4(25, 626)
    with pytest.raises(ValueError, match=r"dark: must be in 0..625"):
        _qrmask.n4(25, -1)
    with pytest.raises(ValueError, match="size: must be a QR Code symbol size"):
        _qrmask.n4(26, 0)


def test_any_buffer_and_keywords() -> None:
    zero = bytes(N)
    expected = _qrmask.scores(25, zero, zero, bytes(8 * N))
    got = _qrmask.scores(size=25, data=bytearray(N), fixed=memoryview(zero), masks=bytearray(8 * N))
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(
    size=st.one_of(st.sampled_from(list(ALL_SIZES)), st.integers(-5, 200), st.just(2**64)),
    off=st.tuples(*[st.sampled_from([0, 0, 0, -1, 1, -25, 1000])] * 3),
    fill=st.sampled_from([0, 1, 2, 255]),
)
def test_property_any_input_scores_or_is_refused(
    size: int, off: tuple[int, int, int], fill: int
) -> None:
    # Lengths at, next to and far from the right ones, for sizes valid or not: a tuple of eight
    # scores, or ValueError, and never a crash.
    n = min(size, 200) ** 2
    data, fixed, masks = (
        bytes([fill]) * max(0, k * n + o) for k, o in zip((1, 1, 8), off, strict=True)
    )
    valid = size in ALL_SIZES and off == (0, 0, 0) and fill < 2
    try:
        scores = _qrmask.scores(size, data, fixed, masks)
    except ValueError:
        assert not valid
        return
    assert valid and len(scores) == 8 and all(s >= 0 for s in scores)


def test_setup_builds_the_extension() -> None:
    root = Path(__file__).resolve().parents[2]
    setup = (root / "setup.py").read_text()
    assert '"matterfab.matter._qrmask"' in setup and "-ffp-contract=off" in setup
    assert (root / "shared/matterfab/matter/_qrmask.c").is_file()
