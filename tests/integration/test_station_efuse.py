"""The ECDSA-peripheral flow end to end on virtual eFuses (esptool's own `espefuse --virt`).

A secure-cert order with `key: ecdsa-peripheral` goes through allocation, the signer and the
builder (in-memory bucket); the station flashes the image to a folder and burns the DAC key
with `--efuse-cmd`, here espefuse on a virtual ESP32-H2 eFuse file. Then espefuse itself says:
the block's purpose is ECDSA_KEY, its read protection is on (RD_DIS bit set, value hidden), and
the key espefuse burned (printed with --show-sensitive-info, in the peripheral's reversed byte
order) is the DAC certificate's private key. No key file is left behind.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from matterfab import lines, profiles
from matterfab.errors import InvalidInput
from matterfab.keywrap import KeyWrapper
from matterfab.matter import secure_cert
from matterfab.messages import DEVICES_ATTESTED, IMAGES_READY, STATION_RESULTS, WorkOrder
from matterfab.objectstore import MemoryObjectStore
from matterfab.refs import RefReader
from matterfab.services.allocator.allocation import Claim, allocate_chunk, lot_messages
from matterfab.services.builder.service import Builder
from matterfab.services.signer.service import Signer
from matterfab.services.station import efuse
from matterfab.services.station.config import StationSettings, load_settings
from matterfab.services.station.sealed import SealedImages
from matterfab.services.station.service import FolderFlasher, Station
from tests.sealed import open_if_sealed

VID, PID = 0xFFF1, 0x8000
KEY_ID = 1
ESPEFUSE = Path(sys.executable).parent / "espefuse"


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profiles")
    profiles.init_test_profile("issuing", VID, PID, profiles_dir=path)
    return path


def _order() -> WorkOrder:
    return WorkOrder.model_validate(
        {
            "order_id": "EF-1",
            "product": {"vendor_id": VID, "product_id": PID},
            "quantity": 1,
            "mfg_date": "2026-12-07",
            "attestation_profile": "issuing",
            "commissioning": {"iteration_count": 1000},
            "dac_storage": "secure-cert",
            "secure_cert": {"key": "ecdsa-peripheral", "efuse_key_id": KEY_ID, "chip": "esp32h2"},
        }
    )


async def _build(store: MemoryObjectStore, profile_dir: Path, state: Path):  # type: ignore[no-untyped-def]
    """The order built, sealed to line local (its key in `state`, where the station finds it)."""
    await lines.ensure_local_line(store, state)
    wrapper = KeyWrapper(bytes(range(32)))
    wo = _order()
    (lot,) = lot_messages(wo, 0, allocate_chunk(wo, Claim(wo.order_id, 1, 1, 7, 1), 0), 1)
    emits = await Signer(store, wrapper, profiles_dir=profile_dir).handle(lot)
    (attested,) = [e.message for e in emits if e.topic == DEVICES_ATTESTED]
    emits = await Builder(store, wrapper, None).handle(attested)
    (image,) = [e.message for e in emits if e.topic == IMAGES_READY]
    return image


def _station(settings: StationSettings, store: MemoryObjectStore, state: Path) -> Station:
    """A folder station of line local holding its key (it opens the sealed pieces)."""
    keys = lines.LineKeys.load(lines.DEFAULT_LINE, [], state)
    sealed = SealedImages(lines.DEFAULT_LINE, keys)
    assert settings.out is not None
    flasher = FolderFlasher(settings.out, None)
    return Station(settings, store, flasher, random.Random(1), sealed=sealed)


def _summary(efuse_file: Path) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [str(ESPEFUSE), "--chip", "esp32h2", "--virt", "--path-efuse-file", str(efuse_file),
         "summary", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return json.loads(out[out.index("{") :])  # type: ignore[no-any-return]


async def test_ecdsa_key_lands_read_protected_in_the_virtual_efuse(
    tmp_path: Path, profile_dir: Path
) -> None:
    store = MemoryObjectStore()
    image = await _build(store, profile_dir, tmp_path / "state")
    assert image.efuse_chip == "esp32h2" and image.objects.efuse_key is not None
    efuse_file, log = tmp_path / "efuse.bin", tmp_path / "espefuse.log"
    cmd = (
        f'sh -c "{ESPEFUSE} --chip {{chip}} --virt --path-efuse-file {efuse_file} '
        f"--do-not-confirm burn-key {{efuse_block}} {{efuse_key_pem}} ECDSA_KEY "
        f'--show-sensitive-info > {log} 2>&1"'
    )
    out = tmp_path / "out"
    settings = load_settings(station_id="s1", line="local", out=out, efuse_cmd=cmd, backoff=0)
    station = _station(settings, store, tmp_path / "state")
    before = set(Path(tempfile.gettempdir()).glob("matterfab-efuse-*"))
    emits = await station.handle(image)
    (result,) = [e.message for e in emits if e.topic == STATION_RESULTS]
    assert result.status == "flashed", result
    assert set(Path(tempfile.gettempdir()).glob("matterfab-efuse-*")) == before  # key files gone

    summary = _summary(efuse_file)
    assert summary[f"KEY_PURPOSE_{KEY_ID}"]["value"] == "ECDSA_KEY"
    block = summary[f"BLOCK_KEY{KEY_ID}"]
    assert block["readable"] is False and "??" in str(block["value"])
    assert int(str(summary["RD_DIS"]["value"])) & (1 << KEY_ID)  # read protection on

    # What espefuse burned (reversed for the peripheral) is the DAC's private key.
    reader = RefReader(store)
    keys = lines.LineKeys.load(lines.DEFAULT_LINE, [], tmp_path / "state")
    assert image.objects.dac is not None and image.objects.secure_cert is not None
    dac = x509.load_der_x509_certificate(await reader.read(image.objects.dac))
    # The station's key (its sealed piece of images.lot) is the DAC's private key...
    assert image.objects.efuse_key is not None
    scalar = open_if_sealed(await reader.read(image.objects.efuse_key), keys)
    derived = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    assert derived.public_key() == dac.public_key()
    # ...and espefuse burned it. espefuse prints the burned bytes through Rich, which takes
    # "[ab cd …]" for a markup tag and drops it when the first digit is a letter: compare
    # whenever the bytes are printed (two runs in three).
    text = log.read_text()
    assert f"BLOCK_KEY{KEY_ID} -> " in text and "BURN BLOCK5  - OK" in text
    if f"BLOCK_KEY{KEY_ID} -> [" in text:
        burned = text.split(f"BLOCK_KEY{KEY_ID} -> [", 1)[1].split("]", 1)[0]
        assert bytes.fromhex(burned.replace(" ", ""))[::-1] == scalar
    # The image itself holds no key: the SEC_CFG names block 5 and PRIV_KEY is empty.
    sealed = await reader.read(image.objects.secure_cert)  # its piece of images.lot, sealed
    read = secure_cert.read_secure_cert(open_if_sealed(sealed, keys))
    assert (read.efuse_block, read.dac_key) == (KEY_ID + 4, b"")
    assert not (out / "EF-1" / "0000000" / "efuse_key.bin").exists()


def test_a_template_that_leaves_the_key_readable_is_refused() -> None:
    with pytest.raises(InvalidInput, match="read-protected"):
        load_settings(
            station_id="s1",
            line="L",
            out="/unused",
            efuse_cmd="espefuse burn-key {efuse_block} {efuse_key} ECDSA_KEY --no-read-protect",
        )
    with pytest.raises(InvalidInput, match="placeholder"):
        efuse.check_template("espefuse burn-key {block} {efuse_key}")


async def test_a_failed_burn_is_final_and_not_requeued(tmp_path: Path, profile_dir: Path) -> None:
    store = MemoryObjectStore()
    image = await _build(store, profile_dir, tmp_path / "state")
    out = tmp_path / "out"
    false = shutil.which("false")
    assert false is not None
    settings = load_settings(
        station_id="s1", line="local", out=out, efuse_cmd=f"{false} {{efuse_key}}", backoff=0
    )
    emits = await _station(settings, store, tmp_path / "state").handle(image)
    assert [e.topic for e in emits] == [STATION_RESULTS]  # nothing back on mfg.images.ready
    (result,) = [e.message for e in emits]
    assert result.status == "failed" and result.final and "not re-queued" in result.reason


async def test_folder_station_without_efuse_cmd_writes_the_key_beside_the_image(
    tmp_path: Path, profile_dir: Path
) -> None:
    """A line that programs from folders gets efuse_key.bin to burn with its own tooling."""
    store = MemoryObjectStore()
    image = await _build(store, profile_dir, tmp_path / "state")
    out = tmp_path / "out"
    settings = load_settings(station_id="s1", line="local", out=out, backoff=0)
    emits = await _station(settings, store, tmp_path / "state").handle(image)
    (result,) = [e.message for e in emits if e.topic == STATION_RESULTS]
    assert result.status == "flashed"
    key = (out / "EF-1" / "0000000" / "efuse_key.bin").read_bytes()
    assert image.objects.dac is not None
    dac = x509.load_der_x509_certificate(await RefReader(store).read(image.objects.dac))
    assert ec.derive_private_key(int.from_bytes(key, "big"), ec.SECP256R1()).public_key() == (
        dac.public_key()
    )
