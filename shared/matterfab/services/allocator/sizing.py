"""Up-front NVS check of a work order: every device's data encodes and fits its partition.

Without it the allocator accepts an order whose partition is too small (or whose extra entries
cannot be encoded), the signer issues a DAC per device, and then the builder fails every single
device: a dead letter per device, DACs spent, and an order that never completes. Here the
allocator builds one partition from a worst-case device of the order (largest certificates
Matter allows, longest serial number and unique ID, longest value of every extra entry) with
the real encoder (`matterfab.matter.nvs`), so what it accepts, the builder can build. The
worst case has the order's dac_storage, so its key set is the one the builder will write.
"""

from __future__ import annotations

from matterfab.errors import FieldError, InvalidInput
from matterfab.matter import nvs
from matterfab.messages.work_order import MAX_REPORTED_ERRORS, SERIAL_MAX_LEN, WorkOrder

MAX_CERT_DER = 600  # Matter spec: DAC and PAI certificates are at most 600 bytes DER
MAX_CD_DER = 600  # a CMS-signed CD with 100 product IDs stays under this
SALT_LEN = 32  # the allocator's salt length (allocation.SALT_LEN)
RD_ID_UID_MAX = 32  # overrides may give up to 32 bytes
VERIFIER_LEN = 97
P256_KEY_LEN = 32


def order_nvs_errors(
    order: WorkOrder, *, cert_size: int = MAX_CERT_DER, cd_size: int = MAX_CD_DER
) -> list[FieldError]:
    """Errors that would make the builder fail devices of `order` (empty: all will build)."""
    errors = _extra_value_errors(order)
    if errors:
        return errors
    try:
        nvs.build_partition(_worst_case(order, cert_size, cd_size), order.partition.size)
    except InvalidInput as exc:
        return [_order_field(e) for e in exc.errors]
    return []


def _extra_value_errors(order: WorkOrder) -> list[FieldError]:
    """Every extra value (common or per device) must fit its NVS type."""
    errors: list[FieldError] = []
    for i, e in enumerate(order.extra_entries):
        if e.value is not None:
            errors += _check(e.namespace, e.key, e.type, e.value, f"extra_entries[{i}]")
    if order.devices is not None:
        per_device = [e for e in order.extra_entries if e.value is None]
        for d, dev in enumerate(order.devices):
            for e in per_device:
                if e.key in dev.extra:
                    where = f"devices[{d}].extra.{e.key}"
                    errors += _check(e.namespace, e.key, e.type, dev.extra[e.key], where)
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    return errors[:MAX_REPORTED_ERRORS]


def _check(namespace: str, key: str, kind: str, value: int | str, where: str) -> list[FieldError]:
    try:
        nvs.validate_extra_entry(nvs.ExtraEntry(namespace, key, kind, value), where)  # type: ignore[arg-type]
    except InvalidInput as exc:
        # validate_extra_entry names `<where>.value`; a per-device value is the field itself.
        return [
            FieldError(where if where.startswith("devices[") else e.field, e.message)
            for e in exc.errors
        ]
    return []


def _longest(order: WorkOrder, key: str, common: int | str | None) -> int | str:
    """The value of extra `key` that takes the most room: the common one or the longest given."""
    if common is not None:
        return common
    values = [d.extra[key] for d in order.devices or [] if key in d.extra]
    return max(values, key=lambda v: len(str(v)))


def _worst_case(order: WorkOrder, cert_size: int, cd_size: int) -> nvs.FactoryData:
    """A device of `order` with every variable-size item at its largest."""
    p = order.product
    uid = order.commissioning.rotating_device_id or any(d.rd_id_uid for d in order.devices or [])
    return nvs.FactoryData(
        discriminator=0,
        iteration_count=order.commissioning.iteration_count,
        salt=b"\x00" * SALT_LEN,
        verifier=b"\x00" * VERIFIER_LEN,
        # Placeholders of the largest allowed sizes: the encoder checks sizes, not contents.
        dac_cert=b"\x30" * cert_size,
        dac_key=b"\x01" * P256_KEY_LEN,
        dac_pub_key=b"\x04" + b"\x01" * 64,
        pai_cert=b"\x30" * cert_size,
        cert_dclrn=b"\x30" * cd_size,
        dac_storage=order.dac_storage,  # secure-cert / on-module partitions hold no DAC
        serial_num="S" * SERIAL_MAX_LEN,
        mfg_date=order.mfg_date,
        rd_id_uid=b"\x00" * RD_ID_UID_MAX if uid else None,
        **p.factory_fields(),
        extra=tuple(
            nvs.ExtraEntry(e.namespace, e.key, e.type, _longest(order, e.key, e.value))
            for e in order.extra_entries
            if e.value is not None or order.devices is not None
        ),
    )


def _order_field(e: FieldError) -> FieldError:
    """An encoder error named by the work-order field it comes from."""
    if e.field.startswith("extra["):
        return FieldError("extra_entries" + e.field.removeprefix("extra"), e.message)
    if e.field == "partition.size":
        return FieldError(
            e.field,
            f"{e.message} (for the largest DAC, PAI and CD Matter allows and this order's "
            "longest serial number, unique ID and extra values)",
        )
    return e
