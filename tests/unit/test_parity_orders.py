"""Issue #24's work-order fields: what is accepted, and each refusal with its field and rule."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from test_mfgtool_bugs import errors, order

from matterfab.matter import device_info, nvs
from matterfab.messages import WorkOrder

P = {"vendor_id": 0xFFF1, "product_id": 0x8000}


def test_every_new_field_together_is_accepted() -> None:
    doc = order(
        product=P
        | {
            "calendar_types": ["gregorian", "islamic", "taiwanese"],
            "locales": ["en-US", "sr-Latn-RS", "es-419", "de-CH-1996", "x-private"],
            "fixed_labels": [{"endpoint": 0, "label": "a", "value": "b"}],
            "supported_modes": [
                {"endpoint": 2, "label": "Max", "mode": 255, "tags": [{"value": 1, "mfg_code": 1}]}
            ],
        },
        mfg_date="20261207",
        commissioning={"iteration_count": 1000, "discovery": ["thread", "nfc", "on-network"]},
        dac_storage="secure-cert",
        dac_source="imported",
        secure_cert={"key": "ecdsa-peripheral", "efuse_key_id": 5, "chip": "esp32c61"},
        extra_entries=[
            {"namespace": "app", "key": "a", "type": "i8", "value": -5},
            {"namespace": "app", "key": "b", "type": "u64", "value": 2**64 - 1},
            {"namespace": "app", "key": "c", "type": "i64", "value": -(2**63)},
            {"namespace": "app", "key": "d", "type": "binary", "value": "AAEC"},
        ],
    )
    assert errors(doc) == []
    wo = WorkOrder.model_validate(doc)
    fields = wo.product.factory_fields()
    assert fields["fixed_labels"] == (device_info.FixedLabel(0, "a", "b"),)
    assert nvs.FactoryData(  # the product's lists are FactoryData's, by name
        discriminator=1,
        iteration_count=1000,
        salt=bytes(16),
        verifier=None,
        cert_dclrn=b"\x30",
        dac_storage="on-module",
        **fields,
    ).calendar_types == ("gregorian", "islamic", "taiwanese")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"commissioning": {"discovery": ["ble", "soft-ap"]}},
            "commissioning.discovery: Value error, soft-ap is reserved",
        ),
        ({"product": P | {"calendar_types": ["Gregorian"]}}, "must be one of buddhist"),
        ({"product": P | {"calendar_types": ["hebrew", "hebrew"]}}, "[1] repeats a calendar type"),
        ({"product": P | {"locales": ["en_US"]}}, "[0] must be a BCP 47 language tag"),
        ({"product": P | {"locales": ["english-language-tag"]}}, "BCP 47"),
        ({"product": P | {"locales": ["a" * 36]}}, "BCP 47"),
        ({"product": P | {"locales": ["en-US", "EN-us"]}}, "[1] repeats a locale"),
        ({"product": P | {"locales": []}}, "at least 1 item"),
        ({"mfg_date": "2026-13-01"}, "(a real date)"),
        ({"mfg_date": "2026-12-07ABC"}, "8-character vendor suffix"),
        ({"dac_storage": "on-module", "dac_source": "imported"}, "dac_source: imported needs"),
        (
            {"secure_cert": {"rd_id_uid": True}, "dac_storage": "secure-cert"},
            "secure_cert.rd_id_uid: needs commissioning.rotating_device_id",
        ),
        (
            {
                "commissioning": {"iteration_count": 1000, "dynamic_passcode": True},
                "devices": [{"passcode": 20202021}],
            },
            "devices[0].passcode: is not allowed with a dynamic passcode",
        ),
        (
            {"devices": [{"verifier": base64.b64encode(bytes(97)).decode()}]},
            "devices[0].verifier: needs salt and passcode beside it",
        ),
        ({"devices": [{"verifier": "AAAA"}]}, "base64 of 97 bytes"),
        (
            {"extra_entries": [{"namespace": "app", "key": "k", "type": "i8", "value": 200}]},
            "must be in -128..127",
        ),
    ],
)
def test_refusals_name_field_and_rule(changes: dict[str, Any], expected: str) -> None:
    got = errors(order(**changes))
    if not got:  # value rules the encoder checks (allocator: sizing.order_nvs_errors)
        from matterfab.services.allocator import sizing

        got = [str(e) for e in sizing.order_nvs_errors(WorkOrder.model_validate(order(**changes)))]
    assert any(expected in e for e in got), got


def test_extra_entry_cannot_shadow_a_device_info_key() -> None:
    fields = WorkOrder.model_validate(
        order(product=P | {"locales": ["en-US"]})
    ).product.factory_fields()
    data = nvs.FactoryData(
        discriminator=1,
        iteration_count=1000,
        salt=bytes(16),
        verifier=bytes(97),
        cert_dclrn=b"\x30",
        dac_storage="on-module",
        **fields,
        extra=(nvs.ExtraEntry(nvs.NAMESPACE, "locale-sz", "u32", 9),),
    )
    with pytest.raises(Exception, match="duplicates key 'locale-sz'"):
        nvs.build_partition(data)
