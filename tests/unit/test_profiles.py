"""Attestation profiles on disk, file key sources and the `matterfab pki` commands."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import vectors_path
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from matterfab import keysource, profiles
from matterfab.cli.pki import app
from matterfab.errors import AttestationError, InvalidInput
from matterfab.matter import attestation, cd, pki

VID, PID = 0xFFF1, 0x8000


def _issue(profile: profiles.AttestationProfile) -> attestation.IssuedDac:
    return attestation.issue_dac(
        pai_cert=profile.pai_cert,
        signer=profile.signer(),
        vendor_id=profile.vendor_id,
        product_id=profile.product_id or PID,
        not_before=datetime.now(UTC),
        not_after=None,
    )


def test_init_test_profile_layout(tmp_path: Path) -> None:
    profile = profiles.init_test_profile("demo", VID, PID, profiles_dir=tmp_path)
    folder = tmp_path / "demo"
    assert profile.directory == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "cd-signing.pem",
        "cd.der",
        "paa.pem",
        "pai-key.pem",
        "pai.pem",
        "profile.json",
    ]
    assert stat.S_IMODE((folder / "pai-key.pem").stat().st_mode) == 0o600
    meta = json.loads((folder / "profile.json").read_text())
    assert meta["vendor_id"] == VID and meta["product_id"] == PID
    assert meta["key_source"] == {"type": "file", "path": "pai-key.pem"}
    assert meta["created_at"]
    # The CD is a test CD (certification_type 0) for this VID/PID, signed by cd-signing.pem.
    from cryptography import x509

    cd_cert = x509.load_pem_x509_certificate((folder / "cd-signing.pem").read_bytes())
    content = cd.verify_cd((folder / "cd.der").read_bytes(), cd_cert)
    assert (content.vendor_id, content.product_id_array, content.certification_type) == (
        VID,
        [PID],
        0,
    )
    dac = _issue(profile)
    attestation.verify_chain(dac.certificate, profile.pai_cert, profile.paa_cert)


def test_load_and_list(tmp_path: Path) -> None:
    profiles.init_test_profile("a", VID, PID, profiles_dir=tmp_path)
    profiles.init_test_profile("b", VID, 0x8001, profiles_dir=tmp_path)
    assert profiles.list_profiles(tmp_path) == ["a", "b"]
    loaded = profiles.load_profile("b", tmp_path)
    assert (loaded.vendor_id, loaded.product_id, loaded.dac_validity_days) == (VID, 0x8001, None)
    assert profiles.list_profiles(tmp_path / "none") == []


def test_unknown_profile(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        profiles.load_profile("x", tmp_path)
    assert info.value.field == "attestation_profile"
    assert "unknown profile 'x'" in str(info.value)
    with pytest.raises(InvalidInput, match="unknown profile"):
        profiles.load_profile("../etc", tmp_path)


def test_existing_profile_needs_force(tmp_path: Path) -> None:
    first = profiles.init_test_profile("p", VID, PID, profiles_dir=tmp_path)
    with pytest.raises(InvalidInput, match="already exists"):
        profiles.init_test_profile("p", VID, PID, profiles_dir=tmp_path)
    second = profiles.init_test_profile("p", VID, PID, profiles_dir=tmp_path, force=True)
    assert second.pai_cert != first.pai_cert
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no staging folders left behind


@pytest.mark.parametrize(("vid", "pid", "field"), [(0, PID, "vendor_id"), (VID, 0, "product_id")])
def test_invalid_ids(tmp_path: Path, vid: int, pid: int, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        profiles.init_test_profile("p", vid, pid, profiles_dir=tmp_path)
    assert info.value.field == field
    assert not (tmp_path / "p").exists()


def test_invalid_name(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="profile name"):
        profiles.init_test_profile("a/b", VID, PID, profiles_dir=tmp_path)


def test_with_the_public_matter_test_paa_and_cd_key(tmp_path: Path) -> None:
    vectors = vectors_path.vectors_dir()
    profile = profiles.init_test_profile(
        "sdk",
        VID,
        PID,
        profiles_dir=tmp_path,
        paa_cert_path=vectors / "Chip-Test-PAA-FFF1-Cert.pem",
        paa_key_path=vectors / "Chip-Test-PAA-FFF1-Key.pem",
        cd_cert_path=vectors / "Chip-Test-CD-Signing-Cert.pem",
        cd_key_path=vectors / "Chip-Test-CD-Signing-Key.pem",
    )
    assert (tmp_path / "sdk" / "paa.pem").read_bytes() == (
        vectors / "Chip-Test-PAA-FFF1-Cert.pem"
    ).read_bytes().replace(b"\r\n", b"\n")
    assert cd.cd_signer_key_id(profile.cd_der) == cd.cd_signer_key_id(
        (vectors / "Chip-Test-CD-FFF1-8000-8063.der").read_bytes()
    )
    attestation.verify_chain(_issue(profile).certificate, profile.pai_cert, profile.paa_cert)


def test_mismatched_paa_key(tmp_path: Path) -> None:
    vectors = vectors_path.vectors_dir()
    with pytest.raises(InvalidInput, match="does not match"):
        profiles.init_test_profile(
            "x",
            VID,
            PID,
            profiles_dir=tmp_path,
            paa_cert_path=vectors / "Chip-Test-PAA-FFF1-Cert.pem",
            paa_key_path=vectors / "Chip-Test-CD-Signing-Key.pem",
        )
    with pytest.raises(InvalidInput, match="go together"):
        profiles.init_test_profile(
            "x", VID, PID, profiles_dir=tmp_path, paa_cert_path=vectors / "x.pem"
        )


def test_public_summary_has_no_key_material(tmp_path: Path) -> None:
    profile = profiles.init_test_profile("s", VID, PID, profiles_dir=tmp_path)
    summary = json.dumps(profile.public_summary())
    assert "PRIVATE KEY" not in summary
    key_pem = (tmp_path / "s" / "pai-key.pem").read_text()
    assert key_pem.splitlines()[1] not in summary
    assert "BEGIN CERTIFICATE" in summary


def test_signer_must_match_the_pai(tmp_path: Path) -> None:
    profile = profiles.init_test_profile("m", VID, PID, profiles_dir=tmp_path)
    _, other = pki.make_pai(*pki.make_paa(), VID)
    (tmp_path / "m" / "pai-key.pem").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(InvalidInput, match="does not match PAI"):
        profile.signer()


def test_profiles_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATTERFAB_PROFILES_DIR", str(tmp_path / "pp"))
    assert profiles.profiles_dir() == tmp_path / "pp"
    monkeypatch.delenv("MATTERFAB_PROFILES_DIR")
    monkeypatch.setenv("MATTERFAB_HOME", str(tmp_path / "home"))
    assert profiles.profiles_dir() == tmp_path / "home" / "profiles"


def test_load_signer_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = pki.make_paa()
    path = tmp_path / "k.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    signer = keysource.load_signer(f"file:{path}")
    assert signer.public_key() == key.public_key()
    assert keysource.load_signer({"type": "file", "path": "k.pem"}, base_dir=tmp_path)
    with pytest.raises(InvalidInput, match="cannot read"):
        keysource.load_signer(f"file:{tmp_path / 'missing.pem'}")
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(InvalidInput, match="not an unencrypted"):
        keysource.load_signer(f"file:{tmp_path / 'bad.pem'}")
    with pytest.raises(InvalidInput, match="'file' or 'pkcs11'"):
        keysource.load_signer({"type": "vault"})
    with pytest.raises(InvalidInput, match="file:"):
        keysource.load_signer("/plain/path.pem")
    with pytest.raises(InvalidInput, match="needs module, token_label"):
        keysource.load_signer({"type": "pkcs11", "key_label": "k"})
    monkeypatch.delenv("MATTERFAB_HSM_PIN", raising=False)
    with pytest.raises(InvalidInput, match="MATTERFAB_HSM_PIN"):
        keysource.load_signer(
            {"type": "pkcs11", "module": "/x.so", "token_label": "t", "key_label": "k"}
        )


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No stack here: the profile is not published (a note on stderr says so).
    monkeypatch.setenv("MATTERFAB_HOME", str(tmp_path / "no-stack"))
    for var in ("MATTERFAB_S3_ENDPOINT", "MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    base = ["--profiles-dir", str(tmp_path)]
    result = runner.invoke(
        app, ["init-test", "--vid", "0xFFF1", "--pid", "32768", "--name", "cli", *base]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(tmp_path / "cli"), str(tmp_path / "cli" / "paa.pem")]
    assert "signer publishes it" in result.stderr
    profile = profiles.load_profile("cli", tmp_path)
    assert (profile.vendor_id, profile.product_id) == (0xFFF1, 0x8000)

    shown = runner.invoke(app, ["show", "cli", *base])
    assert shown.exit_code == 0
    assert shown.output.splitlines()[0] == str(tmp_path / "cli")
    as_json = runner.invoke(app, ["show", "cli", "--json", *base])
    assert json.loads("\n".join(as_json.output.splitlines()[1:]))["vendor_id"] == 0xFFF1

    listed = runner.invoke(app, ["list", *base])
    assert listed.output.splitlines() == ["cli\ttest\t0xFFF1/0x8000"]

    again = runner.invoke(
        app, ["init-test", "--vid", "0xFFF1", "--pid", "0x8000", "--name", "cli", *base]
    )
    assert again.exit_code == 2
    assert "already exists" in again.output

    unknown = runner.invoke(app, ["show", "nope", *base])
    assert unknown.exit_code == 2
    assert "unknown profile 'nope'" in unknown.output

    bad = runner.invoke(app, ["init-test", "--vid", "0", "--pid", "1", "--name", "z", *base])
    assert bad.exit_code == 2
    assert "vendor_id" in bad.output

    not_hex = runner.invoke(app, ["init-test", "--vid", "zz", "--pid", "1", "--name", "z", *base])
    assert not_hex.exit_code != 0


def _cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("MATTERFAB_HOME", str(tmp_path / "no-stack"))
    for var in ("MATTERFAB_S3_ENDPOINT", "MATTERFAB_S3_ACCESS_KEY", "MATTERFAB_S3_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    return ["--profiles-dir", str(tmp_path)]


def test_cd_only_profile_with_a_test_cd(tmp_path: Path) -> None:
    profile = profiles.create_cd_only_profile("mod", VID, PID, profiles_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "mod").iterdir()) == [
        "cd-signing.pem",
        "cd.der",
        "profile.json",
    ]
    assert profile.kind == "cd-only" and not profile.issues_dacs
    assert (profile.pai_cert, profile.paa_cert, profile.key_spec) == (None, None, None)
    content = cd.parse_cd(profile.cd_der)
    assert (content.vendor_id, content.product_id_array, content.certification_type) == (
        VID,
        [PID],
        0,
    )
    summary = profile.public_summary()
    assert summary["issues_dacs"] is False and summary["kind"] == "cd-only"
    assert summary["pai_pem"] is None and summary["paa_pem"] is None
    assert summary["key_source_type"] is None
    assert {"name", "vendor_id", "product_id", "dac_validity_days", "cd_der_base64"} <= set(summary)
    with pytest.raises(AttestationError, match="CD-only"):
        profile.signer()
    assert profiles.load_profile("mod", tmp_path).public_summary() == summary
    # Profiles that issue DACs say so too.
    test = profiles.init_test_profile("t", VID, PID, profiles_dir=tmp_path)
    assert test.issues_dacs and test.kind == "test"
    assert test.public_summary()["issues_dacs"] is True


def test_cd_only_profile_with_a_given_cd(tmp_path: Path) -> None:
    vectors = vectors_path.vectors_dir()
    sdk_cd = (vectors / "Chip-Test-CD-FFF1-8000-8063.der").read_bytes()
    signing = profiles.read_cert(vectors / "Chip-Test-CD-Signing-Cert.pem", "cd")
    profile = profiles.create_cd_only_profile("sdk", VID, 0x8005, sdk_cd, signing, tmp_path)
    assert profile.cd_der == sdk_cd and not profile.issues_dacs
    # Without a signing certificate the CD is only parsed; any PID it lists is allowed.
    unverified = profiles.create_cd_only_profile("any", VID, None, sdk_cd, None, tmp_path)
    assert unverified.product_id is None
    assert not (tmp_path / "any" / "cd-signing.pem").exists()


@pytest.mark.parametrize(
    ("vid", "pid", "use_other_signer", "message"),
    [
        (0xFFF2, PID, False, "CD vendor_id is 0xFFF1, not the profile's 0xFFF2"),
        (VID, 0x9000, False, "CD does not list product_id 0x9000"),
        (VID, PID, True, "does not verify with the CD signing certificate"),
    ],
)
def test_cd_only_profile_refuses_a_cd_that_does_not_fit(
    tmp_path: Path, vid: int, pid: int, use_other_signer: bool, message: str
) -> None:
    cd_der, signing = profiles.make_test_cd(VID, [PID])
    if use_other_signer:
        signing = pki.make_cd_signing()[0]
    with pytest.raises(InvalidInput, match=message) as info:
        profiles.create_cd_only_profile("bad", vid, pid, cd_der, signing, tmp_path)
    assert info.value.field == "attestation_profile.cd"
    assert not (tmp_path / "bad").exists()


def test_cd_only_needs_a_pid_for_a_test_cd(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="required to make a test CD"):
        profiles.create_cd_only_profile("x", VID, None, profiles_dir=tmp_path)
    with pytest.raises(InvalidInput) as info:
        profiles.create_cd_only_profile("x", 0, PID, profiles_dir=tmp_path)
    assert info.value.field == "vendor_id"
    assert list(tmp_path.iterdir()) == []


def test_profiles_without_kind_read_as_before(tmp_path: Path) -> None:
    profiles.init_test_profile("old", VID, PID, profiles_dir=tmp_path)
    meta_path = tmp_path / "old" / "profile.json"
    meta = json.loads(meta_path.read_text())
    del meta["kind"]
    meta_path.write_text(json.dumps(meta))
    assert profiles.load_profile("old", tmp_path).kind == "test"
    meta["key_source"] = {"type": "pkcs11", "module": "/m.so", "token_label": "t", "key_label": "k"}
    meta_path.write_text(json.dumps(meta))
    assert profiles.load_profile("old", tmp_path).kind == "production"
    meta["kind"] = "vault"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match="damaged: kind must be one of"):
        profiles.load_profile("old", tmp_path)


def test_cli_add_cd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _cli_env(tmp_path, monkeypatch)
    runner = CliRunner()
    made = runner.invoke(app, ["add-cd", "onmod", "--vid", "0xFFF1", "--pid", "0x8000", *base])
    assert made.exit_code == 0, made.output
    assert made.stdout.splitlines() == [str(tmp_path / "onmod")]
    assert not profiles.load_profile("onmod", tmp_path).issues_dacs

    vectors = vectors_path.vectors_dir()
    sdk_cd = vectors / "Chip-Test-CD-FFF1-8000-8063.der"
    given = runner.invoke(
        app,
        ["add-cd", "sdk", "--vid", "0xFFF1", "--pid", "0x8001", "--cd", str(sdk_cd),
         "--cd-signing-cert", str(vectors / "Chip-Test-CD-Signing-Cert.pem"), *base],
    )  # fmt: skip
    assert given.exit_code == 0, given.output
    assert "NOT verified" not in given.stderr
    unverified = runner.invoke(
        app, ["add-cd", "nov", "--vid", "0xFFF1", "--cd", str(sdk_cd), *base]
    )
    assert unverified.exit_code == 0, unverified.output
    assert f"warning: --cd {sdk_cd} was parsed but its signature was NOT verified" in (
        unverified.stderr
    )
    other_vid = runner.invoke(app, ["add-cd", "o", "--vid", "0xFFF2", "--cd", str(sdk_cd), *base])
    assert other_vid.exit_code == 2
    assert f"error: --cd {sdk_cd}: CD vendor_id is 0xFFF1, not the profile's 0xFFF2" in (
        other_vid.stderr
    )
    missing = runner.invoke(app, ["add-cd", "m", "--vid", "1", "--cd", str(tmp_path / "no"), *base])
    assert missing.exit_code == 2
    assert f"--cd {tmp_path / 'no'}: cannot read" in missing.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()

    listed = runner.invoke(app, ["list", *base])
    assert listed.output.splitlines() == [
        "nov\tcd-only\t0xFFF1/any",
        "onmod\tcd-only\t0xFFF1/0x8000",
        "sdk\tcd-only\t0xFFF1/0x8001",
    ]
    shown = runner.invoke(app, ["show", "onmod", *base])
    assert "key source none (CD only: issues no DACs)" in shown.output
    assert "cd         vendor 0xFFF1, products 0x8000" in shown.output
    as_json = json.loads(
        "\n".join(runner.invoke(app, ["show", "onmod", "--json", *base]).output.splitlines()[1:])
    )
    assert as_json["issues_dacs"] is False and as_json["pai_pem"] is None


def test_add_production_profile_collects_every_fault(tmp_path: Path) -> None:
    from matterfab import production_pki

    spec = production_pki.key_spec(key_file=tmp_path / "none.key")
    with pytest.raises(InvalidInput) as info:
        production_pki.add_production_profile(
            "p",
            pai_cert_path=tmp_path / "pai.pem",
            paa_cert_path=tmp_path / "paa.pem",
            cd_path=tmp_path / "cd.der",
            cd_signing_cert_path=None,
            spec=spec,
            profiles_dir=tmp_path / "profiles",
        )
    assert [e.field for e in info.value.errors] == [
        f"--pai-cert {tmp_path / 'pai.pem'}",
        f"--paa-cert {tmp_path / 'paa.pem'}",
        f"--cd {tmp_path / 'cd.der'}",
        f"--key-file {tmp_path / 'none.key'}",
    ]
    assert not (tmp_path / "profiles" / "p").exists()


def test_add_production_profile_with_a_key_file(tmp_path: Path) -> None:
    from matterfab import production_pki

    paa, paa_key = pki.make_paa("Acme PAA")
    key = keysource.create_key_file(tmp_path / "pai.key")
    pai = pki.issue_pai(paa, paa_key, key.public_key(), VID, common_name="Acme PAI")
    cd_der, cd_cert = profiles.make_test_cd(VID, [PID, 0x8001])
    for name, data in (
        ("pai.pem", pai.public_bytes(serialization.Encoding.PEM)),
        ("paa.pem", paa.public_bytes(serialization.Encoding.PEM)),
        ("cd.der", cd_der),
        ("cd.pem", cd_cert.public_bytes(serialization.Encoding.PEM)),
    ):
        (tmp_path / name).write_bytes(data)
    profile = production_pki.add_production_profile(
        "acme",
        pai_cert_path=tmp_path / "pai.pem",
        paa_cert_path=tmp_path / "paa.pem",
        cd_path=tmp_path / "cd.der",
        cd_signing_cert_path=tmp_path / "cd.pem",
        spec=production_pki.key_spec(key_file=tmp_path / "pai.key"),
        product_id=0x8001,
        dac_validity_days=365,
        profiles_dir=tmp_path / "profiles",
    )
    assert (profile.kind, profile.vendor_id, profile.product_id) == ("production", VID, 0x8001)
    dac = attestation.issue_dac(
        pai_cert=profile.require_pai(),
        signer=profile.signer(),
        vendor_id=VID,
        product_id=0x8001,
        not_before=datetime.now(UTC),
        not_after=None,
    )
    assert profile.paa_cert is not None
    attestation.verify_chain(dac.certificate, profile.require_pai(), profile.paa_cert)
    with pytest.raises(InvalidInput, match="already exists"):
        production_pki.add_production_profile(
            "acme",
            pai_cert_path=tmp_path / "pai.pem",
            paa_cert_path=tmp_path / "paa.pem",
            cd_path=tmp_path / "cd.der",
            cd_signing_cert_path=None,
            spec=production_pki.key_spec(key_file=tmp_path / "pai.key"),
            profiles_dir=tmp_path / "profiles",
        )
