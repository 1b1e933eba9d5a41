"""Matter product appearance enums (Basic Information cluster, ProductAppearance attribute).

Matter Core Specification 1.3, §11.1.5.7 ProductFinishEnum and §11.1.5.8 ColorEnum. The member
names are the spec's names in lower case, exactly the choices `esp-matter-mfg-tool` accepts for
`--product-finish` / `--product-color` (sources/utils.py `ProductFinish`, `ProductColor`), and
the values are what it writes to the factory partition as u32 (`product-finish`,
`product-color`), which ESP-Matter's factory data provider reads back as the enum value.
"""

from __future__ import annotations

import enum

from matterfab.errors import invalid


class ProductFinish(enum.IntEnum):
    """ProductFinishEnum: the visible finish of the product (spec §11.1.5.7)."""

    other = 0
    matte = 1
    satin = 2
    polished = 3
    rugged = 4
    fabric = 5


class ProductColor(enum.IntEnum):
    """ColorEnum: the primary color of the product (spec §11.1.5.8)."""

    black = 0
    navy = 1
    green = 2
    teal = 3
    maroon = 4
    purple = 5
    olive = 6
    gray = 7
    blue = 8
    lime = 9
    aqua = 10
    red = 11
    fuchsia = 12
    yellow = 13
    white = 14
    nickel = 15
    chrome = 16
    brass = 17
    copper = 18
    silver = 19
    gold = 20


FINISH_NAMES: tuple[str, ...] = tuple(m.name for m in ProductFinish)
"""Every accepted product finish name, in enum order."""

COLOR_NAMES: tuple[str, ...] = tuple(m.name for m in ProductColor)
"""Every accepted product color name, in enum order."""


def parse_finish(name: str, field: str = "product.product_finish") -> ProductFinish:
    """Return the ProductFinish named `name` (lower case, as the tool spells it)."""
    try:
        return ProductFinish[name]
    except (KeyError, TypeError):
        raise invalid(field, f"must be one of {', '.join(FINISH_NAMES)}") from None


def parse_color(name: str, field: str = "product.product_color") -> ProductColor:
    """Return the ProductColor named `name` (lower case, as the tool spells it)."""
    try:
        return ProductColor[name]
    except (KeyError, TypeError):
        raise invalid(field, f"must be one of {', '.join(COLOR_NAMES)}") from None
