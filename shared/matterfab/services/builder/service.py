"""The builder: one device's partition image, onboarding codes and QR label, stored write-once.

decode → unwrap the DAC key → build (verifier, NVS image, codes, PNG) in a worker process →
put the objects (If-None-Match) → emit `mfg.images.ready`. The CPU-heavy build runs in a
process pool, so the event loop keeps heartbeating and both cores work.

Per dac_storage: factory-nvs puts the DAC, its key and the PAI in the NVS partition;
secure-cert puts them in a write-once `esp_secure_cert.bin` instead (built in memory, like the
partition: the plaintext key never touches disk); on-module devices come without a DAC, and
their partition and records carry none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from concurrent.futures import Executor
from typing import Any

from matterfab.errors import invalid
from matterfab.keywrap import KeyWrapper
from matterfab.matter import device, nvs
from matterfab.messages import IMAGES_READY, DeviceAttested, ImageReady, ObjectRef
from matterfab.messages.base import device_key
from matterfab.messages.onboarding import OnboardingObjects, OnboardingRecord
from matterfab.runtime import Emit
from matterfab.s3 import ObjectStore, StoredObject

OCTETS = "application/octet-stream"


def device_inputs(
    msg: DeviceAttested, dac_key: bytes, xts_key: bytes | None
) -> device.DeviceInputs:
    """The pure core's inputs from an attested-device message (dac_key b"" for on-module)."""
    p = msg.product
    dac_der = base64.b64decode(msg.dac_cert_b64)
    factory = nvs.FactoryData(
        discriminator=msg.discriminator,
        iteration_count=msg.iteration_count,
        salt=base64.b64decode(msg.salt_b64),
        verifier=b"",
        dac_cert=dac_der,
        dac_key=dac_key,
        dac_pub_key=device.dac_public_key_raw(dac_der) if dac_der else b"",
        pai_cert=base64.b64decode(msg.pai_cert_b64),
        dac_storage=msg.dac_storage,
        cert_dclrn=base64.b64decode(msg.cd_b64),
        serial_num=msg.serial_num,
        mfg_date=msg.mfg_date,
        rd_id_uid=bytes.fromhex(msg.rd_id_uid) if msg.rd_id_uid else None,
        **p.factory_fields(),
        extra=tuple(nvs.ExtraEntry(e.namespace, e.key, e.type, e.value) for e in msg.extra),
    )
    return device.DeviceInputs(
        factory=factory,
        passcode=msg.passcode,
        flow=msg.flow,
        discovery=tuple(msg.discovery),
        partition_size=msg.partition_size,
        xts_key=xts_key,
    )


def carried(msg: DeviceAttested) -> dict[str, Any]:
    """The onboarding record's fields that the attested message carries under the same name."""
    return {
        name: getattr(msg, name)
        for name in OnboardingRecord.model_fields
        if name in DeviceAttested.model_fields
    }


def _ref(obj: StoredObject) -> ObjectRef:
    return ObjectRef(key=obj.key, sha256=obj.sha256, size=obj.size)


def _local_ref(key: str, data: bytes) -> ObjectRef:
    """The ref of an object from its bytes (what put_once would report for them)."""
    return ObjectRef(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data))


class Builder:
    """Builds and stores device images."""

    def __init__(self, store: ObjectStore, wrapper: KeyWrapper, executor: Executor | None):
        self.store = store
        self.wrapper = wrapper
        self.executor = executor

    async def handle(self, msg: DeviceAttested) -> list[Emit]:
        """Build one device and announce its image."""
        on_module = msg.dac_storage == "on-module"
        if not on_module and not (msg.dac_cert_b64 and msg.dac_key_wrapped):
            raise invalid("dac_cert_b64", f"is required when dac_storage is {msg.dac_storage}")
        dac_key = (
            b""
            if on_module
            else self.wrapper.unwrap(msg.dac_key_wrapped, f"dac-key:{msg.device_id}")
        )
        xts_key = None
        if msg.encryption == "xts":
            if not msg.nvs_keys_wrapped:
                raise invalid("nvs_keys_wrapped", "is required when encryption is xts")
            xts_key = self.wrapper.unwrap(msg.nvs_keys_wrapped, f"nvs-keys:{msg.device_id}")
        inputs = device_inputs(msg, dac_key, xts_key)
        loop = asyncio.get_running_loop()
        art = await loop.run_in_executor(self.executor, device.build_device, inputs)
        key = lambda name: device_key(msg.order_id, msg.index, name)  # noqa: E731
        # What this builder writes, by ref name: (object name, bytes, content type).
        files = {
            "partition": ("partition.bin", art.partition, OCTETS),
            "qrcode": ("qrcode.png", art.qrcode_png, "image/png"),
        }
        if art.nvs_keys is not None:
            files["nvs_keys"] = ("nvs_keys.bin", art.nvs_keys, OCTETS)
        if art.secure_cert is not None:
            files["secure_cert"] = ("esp_secure_cert.bin", art.secure_cert, OCTETS)
        # Refs are computed here, so onboarding.json (which lists them) goes out in the same
        # round of concurrent PUTs as the objects it describes.
        refs = {name: _local_ref(key(obj), data) for name, (obj, data, _) in files.items()}
        if not on_module:
            # dac.der is the signer's object: it stored it (write-once) before it emitted this
            # message, so writing it again would only cost a refused PUT and a GET to compare.
            refs["dac"] = _local_ref(key("dac.der"), inputs.factory.dac_cert)
        record = OnboardingRecord(
            **carried(msg),
            vendor_id=msg.product.vendor_id,
            product_id=msg.product.product_id,
            qr_payload=art.qr_payload,
            manual_code=art.manual_code,
            objects=OnboardingObjects(**refs),
        )
        files["onboarding"] = ("onboarding.json", record.to_json(), "application/json")
        stored = await asyncio.gather(
            *(self.store.put_once(key(obj), data, ctype) for obj, data, ctype in files.values())
        )
        by_name = dict(zip(files, stored, strict=True))
        ready = ImageReady.of(
            record,
            msg.order_id,
            _ref(by_name["onboarding"]),
            qrcode_png_b64=base64.b64encode(art.qrcode_png).decode(),
        )
        return [Emit(IMAGES_READY, msg.device_id, ready)]
