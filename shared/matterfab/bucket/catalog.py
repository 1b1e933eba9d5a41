"""Every JSON object in the bucket: its key (as `bucket.keys` writes it), its writer, its model.

One table, read by the schema export (`schemas/bucket/<name>.schema.json`, written by
`python -m matterfab.messages.export`, checked for drift by tests/unit/test_bucket_schemas.py)
and by docs/objects-and-messages.md's table. Models that predate the bucket package stay in the
module that owns them (fleet/records.py, messages/…, firmware.py, lines.py, the station's
presence) and are named here; the rest are in `bucket/models.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from matterfab.bucket import models


@dataclass(frozen=True)
class StoredJson:
    """One kind of JSON object in the bucket."""

    name: str  # schema file name: schemas/bucket/<name>.schema.json
    key: str  # the key pattern (bucket/keys.py has its function)
    writer: str
    model: Any  # a pydantic model or a dataclass (exported through a TypeAdapter)
    key_function: str  # in matterfab.bucket.keys


def stored_objects() -> list[StoredJson]:
    """The table (imports the owning modules late: some import the bucket themselves)."""
    from matterfab import firmware, lines
    from matterfab.fleet import records
    from matterfab.fleet.reissue import ReissueClaim
    from matterfab.messages.dac_requests import DeviceKeyDac, KeyClaim
    from matterfab.messages.onboarding import OnboardingRecord
    from matterfab.messages.station import StationResult
    from matterfab.messages.work_order import WorkOrder
    from matterfab.services.station.presence import StationPresence

    return [
        StoredJson("order", "orders/<order_id>/order.json", "allocator", WorkOrder, "order_json"),
        StoredJson(
            "claim", "orders/<order_id>/claim.json", "allocator", models.OrderClaim, "claim_json"
        ),
        StoredJson(
            "allocation-chunk",
            "orders/<order_id>/allocation/<chunk, 5 digits>.json",
            "allocator",
            models.AllocationChunk,
            "allocation_chunk",
        ),
        StoredJson(
            "emitted", "orders/<order_id>/emitted.json", "allocator", models.Emitted, "emitted_json"
        ),
        StoredJson(
            "claim-record",
            "state/products/<VVVV>-<PPPP>/claims/<seq, 10 digits>.json",
            "allocator",
            models.ClaimRecord,
            "chain_record_key",
        ),
        StoredJson(
            "ready-chunk",
            "orders/<order_id>/ready/<uuid>.json",
            "assembler",
            models.ReadyChunk,
            "ready_chunk",
        ),
        StoredJson(
            "manifest",
            "orders/<order_id>/manifest.json",
            "assembler",
            models.Manifest,
            "manifest_json",
        ),
        StoredJson(
            "onboarding",
            "orders/<order_id>/lots/<first index>/labels.lot (piece onboarding.json)",
            "builder",
            OnboardingRecord,
            "lot_key",
        ),
        StoredJson(
            "station-record",
            "orders/<order_id>/station/<index>.json",
            "station",
            StationResult,
            "station_record_key",
        ),
        StoredJson(
            "device-dac",
            "orders/<order_id>/device-dacs/<index>/<generation>.json",
            "signer (device-key)",
            DeviceKeyDac,
            "device_dac_key",
        ),
        StoredJson(
            "key-claim",
            "device-keys/<VVVV>/<PPPP>/<public key sha256>.json",
            "signer (device-key)",
            KeyClaim,
            "key_claim_key",
        ),
        StoredJson(
            "dac-choice",
            "orders/<order_id>/imported-dacs/<index>.json",
            "signer (imported DACs)",
            models.DacChoice,
            "imported_dac_choice_key",
        ),
        StoredJson(
            "import-batch",
            "dac-pool/<profile>/batches/<batch>.json",
            "`dac import`",
            models.ImportBatch,
            "dac_pool_batch_key",
        ),
        StoredJson(
            "imported-dac",
            "dac-pool/<profile>/dacs/<fingerprint>.json",
            "`dac import`",
            models.ImportedDac,
            "dac_pool_dac_key",
        ),
        StoredJson(
            "pool-claim",
            "dac-pool/<profile>/claims/<fingerprint>.json",
            "signer (imported DACs)",
            models.PoolClaim,
            "dac_pool_claim_key",
        ),
        StoredJson(
            "profile",
            "profiles/<name>.json",
            "signer, `pki init-test/add/add-cd`",
            models.ProfileSummary,
            "profile_key",
        ),
        StoredJson(
            "bundle",
            "firmware/<name>/bundle.json",
            "`firmware add`",
            firmware.Bundle,
            "bundle_key",
        ),
        StoredJson(
            "line-key",
            "lines/<line>/keys/<version, 6 digits>.json",
            "`line create/add/rotate`, `make up`",
            lines.LineKey,
            "line_key_object",
        ),
        StoredJson(
            "presence",
            "lines/<line>/stations/<station_id>.json",
            "station (every beat)",
            StationPresence,
            "presence_key",
        ),
        StoredJson("mac-claim", "macs/<mac>.json", "assembler", models.MacClaim, "mac_key"),
        StoredJson(
            "pointer",
            "fleet/by-serial/<serial>/<VVVVPPPP>.json, fleet/by-dac/<serial>.json, "
            "fleet/by-qr/<sha256>.json",
            "assembler, `device reissue`",
            records.Pointer,
            "serial_key",
        ),
        StoredJson(
            "device-image",
            "fleet/devices/<order_id>/<index>/image-<gen>-<dac serial>.json",
            "assembler, `device reissue`",
            records.DeviceImage,
            "image_key",
        ),
        StoredJson(
            "scrap",
            "fleet/devices/<order_id>/<index>/scrapped.json",
            "`device scrap`",
            records.Scrap,
            "scrap_key",
        ),
        StoredJson(
            "certify-grant",
            "fleet/devices/<order_id>/<index>/certify-<gen>.json",
            "`device reissue`",
            records.CertifyGrant,
            "certify_key",
        ),
        StoredJson(
            "reissue-claim",
            "fleet/devices/<order_id>/<index>/reissue-<gen>.json",
            "`device reissue`",
            ReissueClaim,
            "reissue_key",
        ),
        StoredJson(
            "revocation",
            "fleet/revocations/<profile>/<dac serial>.json",
            "`dac revoke`, `device scrap/reissue`",
            records.Revocation,
            "revocation_key",
        ),
        StoredJson(
            "crl-issue",
            "fleet/crl/<profile>/<number, 10 digits>.json",
            "`pki crl`",
            records.CrlIssue,
            "crl_key",
        ),
    ]


def schema_of(model: Any) -> dict[str, Any]:
    """A model's JSON Schema as stored (serialization mode)."""
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    return adapter.json_schema(mode="serialization")


def render() -> dict[str, str]:
    """Every schema file of the bucket's objects: `<name>.schema.json` → its text."""
    from matterfab.messages import TOPIC_MESSAGES

    messages = set(TOPIC_MESSAGES.values())
    files = {}
    for obj in stored_objects():
        schema: dict[str, Any] = {"$comment": f"bucket object {obj.key} (written by {obj.writer})"}
        if obj.model in messages:  # stored as sent: the message's own schema, one level up
            message_type = obj.model.model_fields["type"].default
            schema["$ref"] = f"../{message_type.replace('/', '.')}.schema.json"
        else:
            schema.update(schema_of(obj.model))
        files[f"{obj.name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files
