"""CD-only and production profiles reach the catalogue: the signer publishes them at startup."""

from __future__ import annotations

import json
import os
from pathlib import Path

from matterfab import catalogue, profiles
from matterfab.keywrap import KeyWrapper
from matterfab.s3 import ObjectStore
from matterfab.services.signer.service import Signer

VID, PID = 0xFFF1, 0x8000


async def test_signer_publishes_a_cd_only_profile_without_a_key(
    store: ObjectStore, tmp_path: Path
) -> None:
    profiles.create_cd_only_profile("it-cd-only", VID, PID, profiles_dir=tmp_path)
    profiles.init_test_profile("it-test", VID, PID, profiles_dir=tmp_path)
    signer = Signer(store, KeyWrapper(os.urandom(32)), profiles_dir=tmp_path)
    await signer.publish_profiles()
    cd_only = json.loads(await store.get(catalogue.key_for("it-cd-only")))
    assert cd_only["issues_dacs"] is False and cd_only["kind"] == "cd-only"
    assert cd_only["pai_pem"] is None and cd_only["paa_pem"] is None
    assert cd_only["vendor_id"] == VID and cd_only["product_id"] == PID
    summary = await catalogue.Catalogue(store).get("it-test")
    assert summary is not None and summary["issues_dacs"] is True
    assert summary.get("issues_dacs", True) and summary["pai_pem"].startswith("-----BEGIN")
