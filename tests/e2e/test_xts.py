"""NVS encryption end to end: an order with `partition.encryption = "xts"`.

Each device gets its own XTS key pair (drawn by the allocator, wrapped in transit), stored
beside its image as nvs_keys.bin; the image decrypts with it to the right factory data, and
without it shows none of the device's data in clear.
"""

from __future__ import annotations

import base64
import json

import pytest

from matterfab.errors import InvalidInput
from matterfab.matter import nvs, spake2p
from matterfab.matter.nvs_reader import xts_key_from_keys_partition
from matterfab.refs import RefReader
from matterfab.s3 import ObjectStore
from matterfab.stack import LocalStack
from tests.pipeline import (
    Services,
    device_objects,
    manifest_doc,
    matterfab,
    work_order,
    write_order,
)
from tests.sealed import local_keys, open_if_sealed

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ORDER = "E2E-XTS"
QUANTITY = 40


@pytest.fixture(scope="module")
def xts_order(
    stack: LocalStack, pipeline: Services, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    order = work_order(ORDER, QUANTITY, profile, partition={"size": 0x6000, "encryption": "xts"})
    path = write_order(tmp_path_factory.mktemp("xts"), order)
    done = matterfab(stack, "order", "submit", str(path), "--wait", "--timeout", "300")
    assert done.returncode == 0, done.stdout + done.stderr
    return ORDER


async def test_every_device_has_its_own_key_and_decrypts(
    stack: LocalStack, store: ObjectStore, xts_order: str
) -> None:
    sealed_keys = local_keys(stack.home)  # both objects are sealed to line local
    rows = (await manifest_doc(store, xts_order))["devices"]
    assert len(rows) == QUANTITY
    dacs = await device_objects(store, xts_order, "dac")  # pieces of the order's dacs.lot
    keys_seen: set[bytes] = set()
    reader = RefReader(store)
    for row in rows:
        refs = row["objects"]  # both pieces of the lot's images.lot, each sealed on its own
        image = open_if_sealed(await reader.read(refs["partition"]), sealed_keys)
        keys = open_if_sealed(await reader.read(refs["nvs_keys"]), sealed_keys)
        assert refs["nvs_keys"]["key"] == refs["partition"]["key"]
        assert refs["nvs_keys"]["key"].endswith("/images.lot")
        assert len(keys) == nvs.KEYS_PARTITION_SIZE
        xts_key = xts_key_from_keys_partition(keys)
        assert xts_key[:32] != xts_key[32:]
        keys_seen.add(xts_key)

        decoded = nvs.decode_partition(image, keys=keys)[nvs.NAMESPACE]
        assert decoded["serial-num"][1] == row["serial_num"]
        assert decoded["discriminator"][1] == int(row["discriminator"])
        assert decoded["dac-cert"][1] == dacs[row["index"]]
        assert spake2p.verify_verifier(
            int(row["passcode"]),
            base64.b64decode(str(decoded["salt"][1])),
            int(decoded["iteration-count"][1]),
            base64.b64decode(str(decoded["verifier"][1])),
        )
        # Without the key: nothing of the device in clear, and no clean decode.
        assert row["serial_num"].encode() not in image
        assert decoded["dac-cert"][1][:64] not in image
        assert decoded["dac-key"][1] not in image
        with pytest.raises(InvalidInput):
            nvs.decode_partition(image)
    assert len(keys_seen) == QUANTITY, "XTS keys repeat across devices"


async def test_the_keys_never_travel_in_clear(
    stack: LocalStack, store: ObjectStore, xts_order: str
) -> None:
    allocation = await store.get(f"orders/{xts_order}/allocation/00000.json")
    ref = (await manifest_doc(store, xts_order))["devices"][0]["objects"]["nvs_keys"]
    sealed = await RefReader(store).read(ref)
    keys = open_if_sealed(sealed, local_keys(stack.home))  # at rest, sealed to line local
    xts_key = xts_key_from_keys_partition(keys)
    for form in (
        xts_key.hex(),
        base64.b64encode(xts_key).decode(),
        base64.b64encode(keys).decode(),
    ):
        assert form not in allocation.decode()
    assert "nvs_keys_wrapped" in json.loads(allocation)[0]


def test_verify_checks_the_encrypted_images(stack: LocalStack, xts_order: str) -> None:
    done = matterfab(stack, "verify", xts_order)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every artifact verified" in done.stdout
