"""Every credential form that can be exercised offline, through google-auth's real flows.

A loopback token endpoint stands in for Google's OAuth server (a key's ``token_uri`` decides where
google-auth asks), and a loopback storage endpoint lists only for the right bearer token, so a test
fails if credentials are not actually sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import google.oauth2.credentials
import pytest
from servers import ACCESS_TOKEN, StubServer, metadata_server, private_bucket

from gcsemb.auth import Identity, resolve
from gcsemb.errors import AuthError
from gcsemb.storage import list_images


@pytest.fixture
def storage():
    with StubServer(private_bucket(ACCESS_TOKEN, ["photos/a.jpg", "photos/b.png"])) as server:
        yield server


def _list(storage, token):
    return [o.uri for o in list_images("gs://private/photos", token, endpoint_url=storage.url)]


@pytest.mark.parametrize("form", ["path", "str-path", "dict", "env"])
def test_service_account_key_forms(form, sa_info, tmp_path, storage, oauth, monkeypatch):
    key = tmp_path / "key.json"
    key.write_text(json.dumps(sa_info))
    token = {"path": key, "str-path": str(key), "dict": sa_info, "env": None}[form]
    if form == "env":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert _list(storage, token) == ["gs://private/photos/a.jpg", "gs://private/photos/b.png"]
    assert any(b"jwt-bearer" in body for _, _, _, body in oauth.requests)  # real token exchange
    assert resolve(token).description == (
        "service account embedder@demo-project.iam.gserviceaccount.com"
    )


def test_gcloud_adc_file_is_found(tmp_path, no_google_credentials):
    # google-auth always sends user refresh tokens to Google's own endpoint, so offline we check
    # discovery: `gcloud auth application-default login`'s file is what resolve(None) picks up.
    adc = tmp_path / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir()
    adc.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "cid",
                "client_secret": "csecret",
                "refresh_token": "1//refresh-me",
            }
        )
    )
    ident = resolve(None)
    assert ident.token.refresh_token == "1//refresh-me"
    assert ident.description.startswith("user credentials")
    assert "refresh-me" not in repr(ident) and "csecret" not in repr(ident)


def test_credentials_object(storage):
    creds = google.oauth2.credentials.Credentials(token=ACCESS_TOKEN)
    assert len(_list(storage, creds)) == 2


def test_metadata_server(storage, tmp_path):
    # google-auth reads GCE_METADATA_HOST at import, as on a VM: use a fresh process.
    with StubServer(metadata_server(ACCESS_TOKEN, "vm-sa@proj.iam.gserviceaccount.com")) as md:
        host = md.url.removeprefix("http://")
        code = (
            "from gcsemb.storage import list_images\n"
            f"print([o.uri for o in list_images('gs://private/photos', 'metadata', "
            f"endpoint_url={storage.url!r})])"
        )
        env = {**os.environ, "GCE_METADATA_HOST": host, "GCE_METADATA_IP": host}
        env.pop("STORAGE_EMULATOR_HOST", None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "gs://private/photos/a.jpg" in out.stdout
        assert any("service-accounts/default/token" in path for _, path, _, _ in md.requests)


def test_anonymous_sends_no_credentials_and_is_refused_by_a_private_bucket(storage):
    with pytest.raises(Exception, match="not public"):
        _list(storage, "anon")
    assert all("Authorization" not in headers for _, _, headers, _ in storage.requests)


def test_no_credentials_never_falls_back_to_anonymous(no_google_credentials):
    with pytest.raises(AuthError, match="No Google credentials found") as err:
        resolve(None)
    assert "gcloud auth application-default login" in str(err.value)
    assert "token='anon'" in str(err.value)


def test_emulator_needs_no_credentials(gcs):
    assert resolve(None, emulator=True).anonymous


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        ("not json {", "is not a JSON key file"),
        ('{"hello": 1}', "has no 'type' field"),
        ('{"type": "service_account", "client_email": "x@y"}', "missing fields: private_key"),
    ],
)
def test_bad_key_files(tmp_path, content, fragment):
    key = tmp_path / "key.json"
    if content is not None:
        key.write_text(content)
    with pytest.raises(AuthError, match=fragment):
        resolve(str(key))


def test_bad_key_in_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(AuthError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        resolve(None)


def test_secrets_stay_out_of_reprs_and_errors(sa_info, private_key_pem):
    ident = resolve(sa_info)
    assert "PRIVATE KEY" not in repr(ident) and "PRIVATE KEY" not in str(ident)
    broken = dict(sa_info, private_key="-----BEGIN PRIVATE KEY-----\nsecretstuff\n")
    with pytest.raises(AuthError) as err:
        resolve(broken)
    assert "secretstuff" not in str(err.value)


def test_unknown_token_type():
    with pytest.raises(AuthError, match="token must be"):
        resolve(42)


def test_identity_passes_through():
    ident = Identity("anon", "anonymous")
    assert resolve(ident) is ident
