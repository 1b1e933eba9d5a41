"""Object keys are built in one module of the library: `matterfab/bucket/keys.py`.

The source of every other module is scanned (its syntax tree, docstrings left out): no string
or f-string piece that starts a bucket key (`orders/…`, `state/…`, `profiles/…` …), no object
name used as a key part (`"order.json"`, `"manifest.json"` …), no call of the generic
`order_key` / `device_key` builders. A module that needs a key calls the bucket's function for
it; a new object gets its function there. The checker itself is tested on snippets, so a scan
that finds nothing is seen to be able to find something.
"""

from __future__ import annotations

import ast
import re

import pytest

from matterfab.bucket import keys
from tests.vectors_path import REPO_ROOT

LIBRARY = REPO_ROOT / "shared" / "matterfab"
KEY_MODULE = LIBRARY / "bucket" / "keys.py"

# First segments of the bucket's keys (bucket/keys.py's docstring lists every object).
KEY_START = re.compile(r"^(orders|state|profiles|fleet|lines|macs|firmware|dac-pool|device-keys)/")
KEY_INSIDE = re.compile(r"/(orders|state/products|fleet|macs|dac-pool|device-keys)/")
OBJECT_NAMES = {
    keys.ORDER_JSON,
    keys.CLAIM_JSON,
    keys.EMITTED_JSON,
    keys.MANIFEST_JSON,
    keys.MANIFEST_CSV,
    keys.QRCODES_ZIP,
    keys.BINDINGS_CSV,
    keys.BINDINGS_FAILED_CSV,
    keys.BINDINGS_SCRAPPED_CSV,
    keys.DACS,
    keys.LABELS,
    keys.IMAGES,
    keys.BUNDLE_FILE,
    "ready/",
    "allocation/",
    "station/",
    "device-dacs/",
    "imported-dacs/",
}
GENERIC_BUILDERS = {"order_key", "device_key", "lot_key_of"}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def key_literals(source: str) -> list[str]:
    """Every place in `source` that writes a bucket key by hand: `line: text`."""
    tree = ast.parse(source)
    docs = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
            first = node.values[0] if node.values else None
            starts = isinstance(first, ast.Constant) and KEY_START.match(str(first.value))
            if starts or any(KEY_INSIDE.search(str(p)) for p in parts):
                found.append(f"{node.lineno}: f-string {ast.unparse(node)}")
            for v in node.values:
                if isinstance(v, ast.Constant):
                    docs.add(id(v))  # checked as part of the f-string
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
        ):
            if "<" in node.value:
                continue  # a key pattern for people (`orders/<order_id>/…`), not a key
            if KEY_START.match(node.value) or node.value in OBJECT_NAMES:
                found.append(f"{node.lineno}: literal {node.value!r}")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            if name in GENERIC_BUILDERS:
                found.append(f"{node.lineno}: call {ast.unparse(node)}")
    return found


def test_no_module_but_the_bucket_builds_a_key() -> None:
    offenders = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        if path == KEY_MODULE:
            continue
        found = key_literals(path.read_text())
        if found:
            offenders[str(path.relative_to(LIBRARY))] = found
    assert offenders == {}, (
        f"build object keys with matterfab/bucket/keys.py (one function per object): {offenders}"
    )


def test_the_key_module_is_where_keys_are_written() -> None:
    # The scan does see keys: the key module itself is full of them.
    assert len(key_literals(KEY_MODULE.read_text())) >= 15


@pytest.mark.parametrize(
    "source",
    [
        'k = f"orders/{order_id}/report.json"',
        'k = "state/products/"',
        'k = prefix + "manifest.json"',
        'k = order_key(order_id, "x")',
        'k = messages.base.device_key(order_id, 1, "x")',
        'print(f"in S3: {s3.bucket}/orders/{order_id}/")',
        'k = f"{ROOT}/fleet/by-dac/{serial}"',
    ],
)
def test_the_scan_finds_hand_built_keys(source: str) -> None:
    assert key_literals(source), source


@pytest.mark.parametrize(
    "source",
    [
        '"""Objects: `orders/<id>/order.json`."""',
        "def f():\n    '''Reads manifest.json.'''\n",
        'msg = f"order {order_id} has no manifest.json (not completed)"',
        "k = keys.manifest_json(order_id)",
        'path = "station/x"  # not a whole object name',
        'pattern = "orders/<order_id>/claim.json"  # described, as bucket/catalog.py does',
    ],
)
def test_the_scan_leaves_prose_and_bucket_calls_alone(source: str) -> None:
    assert key_literals(source) == []


def test_keys_as_written_since_the_start() -> None:
    # Known answers: the keys objects in buckets today were written under.
    assert keys.order_json("WO-1") == "orders/WO-1/order.json"
    assert keys.claim_json("WO-1") == "orders/WO-1/claim.json"
    assert keys.allocation_chunk("WO-1", 3) == "orders/WO-1/allocation/00003.json"
    assert keys.ready_chunk("WO-1", "ab12") == "orders/WO-1/ready/ab12.json"
    assert keys.lot_key("WO-1", 64, keys.IMAGES) == "orders/WO-1/lots/0000064/images.lot"
    assert (
        keys.device_key("WO-1", 5, "partition.bin") == "orders/WO-1/devices/0000005/partition.bin"
    )
    assert (
        keys.generation_key("WO-1", 5, 2, "x.bin") == "orders/WO-1/devices/0000005/gen-0002/x.bin"
    )
    assert keys.station_record_key("WO-1", 5) == "orders/WO-1/station/0000005.json"
    assert keys.station_record_index("WO-1", "orders/WO-1/station/0000005.json") == 5
    assert keys.station_record_index("WO-1", "orders/WO-1/station/x.txt") is None
    assert keys.device_dac_key("WO-1", 5, 1) == "orders/WO-1/device-dacs/0000005/0001.json"
    assert keys.imported_dac_choice_key("WO-1", 5) == "orders/WO-1/imported-dacs/0000005.json"
    prefix = keys.chain_prefix(0xFFF1, 0x8000)
    assert prefix == "state/products/FFF1-8000/claims/"
    assert keys.chain_record_key(prefix, 7) == "state/products/FFF1-8000/claims/0000000007.json"
    assert keys.chain_record_seq("state/products/FFF1-8000/claims/0000000007.json") == 7
    assert keys.chain_products([prefix + "0000000001.json", "state/products/x"]) == {
        (0xFFF1, 0x8000)
    }
    assert keys.key_claim_key(0xFFF1, 0x8000, "ab") == "device-keys/FFF1/8000/ab.json"
    assert keys.profile_key("test") == "profiles/test.json"
    assert keys.bundle_key("fw") == "firmware/fw/bundle.json"
    assert keys.bundle_names(["firmware/fw/bundle.json", "firmware/fw/app.bin"]) == ["fw"]
    assert keys.line_key_object("L", 2) == "lines/L/keys/000002.json"
    assert keys.line_names(["lines/L/keys/000001.json", "lines/M/stations/s.json"]) == ["L"]
    assert keys.presence_key("L", "st1") == "lines/L/stations/st1.json"
    assert keys.presence_prefix() == "lines/"
    assert keys.mac_key("AA:BB:cc:dd:ee:ff") == "macs/aabbccddeeff.json"
    assert keys.dac_pool_claim_key("p", "fp") == "dac-pool/p/claims/fp.json"
    assert keys.dac_pool_prefix("p", "dacs") == "dac-pool/p/dacs/"
    assert keys.serial_key(0xFFF1, 0x8000, "SN 1") == "fleet/by-serial/SN%201/FFF18000.json"
    assert keys.image_key("WO-1", 5, 0, "a1") == "fleet/devices/WO-1/0000005/image-0000-a1.json"
    assert keys.crl_key("p", 3, "der") == "fleet/crl/p/0000000003.der"
    assert keys.revocation_key("p", "A1") == "fleet/revocations/p/a1.json"


def test_fleet_keys_are_the_buckets() -> None:
    from matterfab.fleet import keys as fleet_keys

    assert fleet_keys.mac_key is keys.mac_key
    assert fleet_keys.device_prefix("O", 1) == keys.fleet_device_prefix("O", 1)
    assert fleet_keys.order_prefix("O") == "fleet/devices/O/"
