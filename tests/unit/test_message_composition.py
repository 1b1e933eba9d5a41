"""Lots and device views are composed from parts declared once (issue #23): a lot is its
order's constants plus its devices, a device's view the constants plus one device."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest

import matterfab.messages.lots as lots_module
from matterfab.messages.devices import (
    AllocatedDevice,
    Attestation,
    AttestedDevice,
    DeviceAllocated,
    DeviceAttested,
    DeviceIdentity,
    IssuedDac,
    OrderConstants,
)
from matterfab.messages.lots import LotAllocated, LotAttested, LotKey

ROOT = Path(__file__).resolve().parents[2]
LOT: dict[str, Any] = {
    "type": "lot-allocated/v1",
    "order_id": "WO-7",
    "lot_id": "WO-7/0000004",
    "quantity": 9,
    "product": {"vendor_id": 0xFFF1, "product_id": 0x8000},
    "mfg_date": "2026-11-21",
    "attestation_profile": "p",
    "iteration_count": 1000,
    "flow": "standard",
    "discovery": ["ble"],
    "partition_size": 0x6000,
    "encryption": "xts",
    "line": "l2",
    "line_key": "ab12",
    "devices": [
        {
            "index": i,
            "serial_num": f"S{i}",
            "discriminator": i,
            "passcode": 20202020 + i,
            "salt_b64": "AAAAAAAAAAAAAAAAAAAAAA==",
            "nvs_keys_wrapped": f"k{i}",
            "extra": [{"namespace": "n", "key": "k", "type": "u32", "value": i}],
        }
        for i in (4, 5)
    ],
}


def declared(path: Path) -> dict[str, set[str]]:
    """The fields each class of a module declares in its own body (annotated names)."""
    tree = ast.parse(path.read_text())
    return {
        node.name: {
            s.target.id
            for s in node.body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
        }
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }


def test_lots_declare_no_field_of_a_device_view() -> None:
    device_fields = (set(DeviceIdentity.model_fields) | set(DeviceAttested.model_fields)) - {"type"}
    classes = declared(Path(lots_module.__file__))
    assert {"LotOrder", "LotAllocated", "LotAttested"} <= set(classes)
    assert {c: f & device_fields for c, f in classes.items() if f & device_fields} == {}


def test_every_field_of_a_device_view_comes_from_exactly_one_part() -> None:
    parts = [OrderConstants, AllocatedDevice, IssuedDac, Attestation]
    for view, own in (
        (DeviceAllocated, {"type", "device_id"}),
        (DeviceAttested, {"type", "device_id"}),
    ):
        for name in set(view.model_fields) - own:
            owners = [p.__name__ for p in parts if name in p.model_fields]
            assert len(owners) == 1, (view.__name__, name, owners)
    # and a lot is made of the same parts: nothing of the order is declared twice
    assert set(LotAllocated.model_fields) == {
        *OrderConstants.model_fields,
        *LotKey.model_fields,
        "type",
        "devices",
    }
    assert set(LotAttested.model_fields) == {*LotAllocated.model_fields, *Attestation.model_fields}


def test_a_lot_expands_into_its_devices_with_every_value() -> None:
    lot = LotAllocated.model_validate(LOT)
    views = list(lot.identities())
    assert [v.device_id for v in views] == ["WO-7/0000004", "WO-7/0000005"]
    for view, dev in zip(views, LOT["devices"], strict=True):
        dumped = view.model_dump(mode="json")
        for name, value in LOT.items():
            if name not in ("type", "devices", "lot_id"):
                assert dumped[name] == (
                    value if name != "product" else lot.product.model_dump(mode="json")
                )
        for name, value in dev.items():
            assert dumped[name] == value


def test_an_attested_lot_expands_with_its_attestation_and_dacs() -> None:
    allocated = LotAllocated.model_validate(LOT)
    devices = [
        AttestedDevice(
            **AllocatedDevice.fields_in(d), dac_serial=f"0{d.index}", dac_key_wrapped="w"
        )
        for d in allocated.devices
    ]
    lot = LotAttested.of(allocated, Attestation(pai_cert_b64="UA==", cd_b64="Q0Q="), devices)
    assert lot.type == "lot-attested/v1" and lot.lot_id == "WO-7/0000004"
    (first, ref), _ = lot.attested()
    assert ref is None
    assert (first.dac_serial, first.cd_b64, first.pai_cert_b64) == ("04", "Q0Q=", "UA==")
    assert (first.line, first.line_key, first.passcode) == ("l2", "ab12", 20202024)
    # the wire form is unchanged by the round trip (same keys, same order, same values)
    again = LotAttested.model_validate_json(lot.model_dump_json())
    assert again.model_dump_json() == lot.model_dump_json()
    keys = list(again.model_dump())
    assert keys[:3] == ["order_id", "lot_id", "quantity"]
    assert keys[-4:] == ["type", "pai_cert_b64", "cd_b64", "devices"]


def test_part_refuses_what_is_not_that_part() -> None:
    other: Any = LotAllocated.model_validate(LOT)  # what mypy would refuse (see below)
    with pytest.raises(TypeError, match="is not a IssuedDac"):
        IssuedDac.fields_in(other)


# A composition that passes the wrong part, and a renamed field, as code would have them.
WRONG = """
from matterfab.messages.devices import AllocatedDevice, DeviceAllocated, IssuedDac
from matterfab.messages.lots import LotAllocated


def expand(lot: LotAllocated, device: AllocatedDevice) -> None:
    IssuedDac.fields_in(device)
    DeviceAllocated.of(device, lot)
    print(device.pass_code)
"""


def test_mypy_refuses_a_wrong_part_and_a_renamed_field(tmp_path: Path) -> None:
    from mypy import api

    source = tmp_path / "wrong.py"
    source.write_text(WRONG)
    env = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = str(ROOT / "shared")
    try:
        out, _, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), str(source)])
    finally:
        if env is None:
            os.environ.pop("MYPYPATH")
        else:
            os.environ["MYPYPATH"] = env
    assert status == 1, out
    assert 'Argument 1 to "fields_in" of "Part" has incompatible type "AllocatedDevice"' in out
    assert 'Argument 1 to "of" of "DeviceAllocated" has incompatible type' in out
    assert '"AllocatedDevice" has no attribute "pass_code"' in out


def test_device_views_equal_what_validation_of_their_fields_makes() -> None:
    """The views skip validation (`model_construct`): what they hold is exactly what validating
    the same fields makes, every field set, the defaults included."""
    allocated = LotAllocated.model_validate(LOT)
    for view in allocated.identities():
        checked = DeviceAllocated.model_validate(view.model_dump())
        assert view == checked
        assert view.model_dump_json() == checked.model_dump_json()
    devices = [
        AttestedDevice(**AllocatedDevice.fields_in(d), dac_serial="0a", dac_key_wrapped="w")
        for d in allocated.devices
    ]
    lot = LotAttested.of(allocated, Attestation(pai_cert_b64="UA==", cd_b64="Q0Q="), devices)
    for view, _ in lot.attested():
        checked_attested = DeviceAttested.model_validate(view.model_dump())
        assert view == checked_attested
        assert view.model_dump_json() == checked_attested.model_dump_json()
