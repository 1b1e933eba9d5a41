"""One NVS field table: FIELDS drives keys, order, validation and the work order's limits."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from matterfab.errors import InvalidInput
from matterfab.matter import nvs
from matterfab.messages.work_order import PARTITION_MAX_SIZE, Partition, Product


def test_every_field_is_a_factory_data_attribute_with_its_own_key() -> None:
    attributes = {f.name for f in dataclasses.fields(nvs.FactoryData)}
    assert {f.attribute for f in nvs.FIELDS} <= attributes
    assert len({f.key for f in nvs.FIELDS}) == len(nvs.FIELDS)
    assert nvs.FACTORY_KEYS == tuple(f.key for f in nvs.FIELDS)
    held_by = {mode: nvs.factory_keys(mode) for mode in nvs.DAC_STORAGE_MODES}
    dac_keys = {"dac-cert", "dac-key", "dac-pub-key", "pai-cert"}
    assert set(held_by["factory-nvs"]) - set(held_by["secure-cert"]) == dac_keys
    assert held_by["secure-cert"] == held_by["on-module"]


def test_each_rule_names_its_field_and_says_what_it_must_be() -> None:
    by_attribute = {f.attribute: f for f in nvs.FIELDS}
    cases = {
        "discriminator": (4096, "must be in 0..4095"),
        "vendor_id": (True, "must be u16"),
        "vendor_name": ("v" * 33, "must be at most 32 characters"),
        "serial_num": ("", "must not be empty (omit it instead)"),
        "mfg_date": (
            "20261131",
            "must be YYYY-MM-DD or YYYYMMDD, optionally followed by an 8-character vendor suffix "
            "(a real date)",
        ),
        "rd_id_uid": (b"r" * 33, "must be 16..32 bytes"),
        "dac_pub_key": (b"\x02" * 65, "must be a 65-byte uncompressed point (04 ‖ X ‖ Y)"),
        "cert_dclrn": (b"", "must not be empty"),
        "product_color": ("pink", "must be one of"),
    }
    for attribute, (value, message) in cases.items():
        (error,) = by_attribute[attribute].errors(value)
        assert (error.field, error.message[: len(message)]) == (attribute, message)


def test_dac_fields_are_checked_only_where_the_partition_holds_them() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(nvs.FactoryData)}
    assert fields["dac_cert"] == b""  # on-module and secure-cert devices carry none
    data = nvs.FactoryData(
        discriminator=1,
        iteration_count=1000,
        salt=b"s" * 16,
        verifier=b"v" * 97,
        cert_dclrn=b"cd",
        vendor_id=0xFFF1,
        product_id=0x8000,
        dac_storage="on-module",
    )
    nvs.validate_factory_data(data)  # no DAC: fine where the partition holds none
    with pytest.raises(InvalidInput) as err:
        nvs.validate_factory_data(dataclasses.replace(data, dac_storage="factory-nvs"))
    assert [e.field for e in err.value.errors] == ["dac_cert", "dac_key", "dac_pub_key", "pai_cert"]


def test_work_order_limits_are_the_partitions() -> None:
    for attribute, limit in nvs.STRING_LIMITS.items():
        if attribute in Product.model_fields:
            Product(vendor_id=0xFFF1, product_id=0x8000, **{attribute: "x" * limit})
            with pytest.raises(ValidationError, match=f"at most {limit} characters"):
                Product(vendor_id=0xFFF1, product_id=0x8000, **{attribute: "x" * (limit + 1)})
    assert PARTITION_MAX_SIZE == nvs.MAX_SIZE
    Partition(size=nvs.MAX_SIZE)
    nvs.validate_partition_size(nvs.MAX_SIZE)
    with pytest.raises(ValidationError):
        Partition(size=nvs.MAX_SIZE + nvs.PAGE_SIZE)
    with pytest.raises(InvalidInput, match="at most 0x100000"):
        nvs.validate_partition_size(nvs.MAX_SIZE + nvs.PAGE_SIZE)
