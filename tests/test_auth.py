"""Every credential form, through the code real GCS gets: the endpoint changes only the URL.

The default test storage (the ``gcs`` fixture) is a private bucket's front: it answers only the
bearer token that a loopback OAuth endpoint grants after a real service-account JWT exchange. A
credential form works here only if gcsemb really found, exchanged and sent it.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time

import google.oauth2.credentials
import pytest
from google.oauth2 import service_account
from servers import ACCESS_TOKEN, StubServer, metadata_server, private_bucket

from gcsemb.errors import AccessDenied, AuthError
from gcsemb.storage import list_images, open_store
from gcsemb.storage.auth import Identity, resolve

EMAIL = "embedder@demo-project.iam.gserviceaccount.com"


@pytest.fixture
def photos(gcs, bucket):
    gcs.filesystem().pipe({f"{bucket}/photos/a.jpg": b"A", f"{bucket}/photos/b [1].png": b"B"})
    return f"gs://{bucket}/photos"


def _read_all(url: str, token) -> dict[str, bytes]:
    """List and fetch as the pipeline does; the bytes prove the front let us in."""
    store = open_store(url, token=token)
    objects = list(list_images(store))
    got = store.read_many([store.fs._strip_protocol(o.uri) for o in objects])
    return {o.uri.rsplit("/", 1)[1]: data for o, data in zip(objects, got, strict=True)}


def _bearers(proxy, since: int) -> set[str | None]:
    return {
        {k.lower(): v for k, v in h.items()}.get("authorization")
        for _, _, h, _ in proxy.requests[since:]
    }


@pytest.mark.parametrize(
    "form", ["adc-env", "path", "str-path", "dict", "json-text", "sa-object", "token-object"]
)
def test_every_key_form_reaches_a_private_bucket(form, gcs, photos, sa_info, key_file, oauth):
    token = {
        "adc-env": None,  # GOOGLE_APPLICATION_CREDENTIALS (the fixture's own key)
        "path": __import__("pathlib").Path(key_file),
        "str-path": key_file,
        "dict": sa_info,
        "json-text": json.dumps(sa_info, indent=2),  # e.g. a notebook secret's value
        "sa-object": service_account.Credentials.from_service_account_info(
            sa_info, scopes=["https://www.googleapis.com/auth/devstorage.read_write"]
        ),
        "token-object": google.oauth2.credentials.Credentials(token=ACCESS_TOKEN),
    }[form]
    before = len(gcs.proxy.requests)
    assert _read_all(photos, token) == {"a.jpg": b"A", "b [1].png": b"B"}
    assert _bearers(gcs.proxy, before) == {f"Bearer {ACCESS_TOKEN}"}
    store = open_store(photos, token=token)
    if form in ("path", "str-path", "dict", "json-text", "sa-object"):
        assert any(b"jwt-bearer" in body for _, _, _, body in oauth.requests)  # real exchange
    if form != "token-object":
        assert store.identity.description == f"service account {EMAIL}"
    assert "PRIVATE KEY" not in repr(store) and ACCESS_TOKEN not in repr(store)


def test_identity_is_resolved_once_per_run(gcs, photos, tiny_ckpt, key_file, oauth):
    from gcsemb.embedding.job import embed
    from gcsemb.model.embedder import TINY_MODEL

    embed(photos, photos + "-emb", model=TINY_MODEL, pretrained=tiny_ckpt, token=key_file,
          progress=False)  # fmt: skip
    assert len(oauth.requests) == 1  # one token for listing, index, write check, fetch, write


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
    assert ident.description.startswith("user credentials") and ident.recipe == "adc"
    assert "refresh-me" not in repr(ident) and "csecret" not in repr(ident)


def test_metadata_server(tmp_path):
    # google-auth reads GCE_METADATA_HOST at import, as on a VM: use a fresh process.
    storage = StubServer(private_bucket(ACCESS_TOKEN, ["photos/a.jpg", "photos/b.png"]))
    md = StubServer(metadata_server(ACCESS_TOKEN, "vm-sa@proj.iam.gserviceaccount.com"))
    with storage, md:
        host = md.url.removeprefix("http://")
        code = (
            "from gcsemb.storage import list_images, open_store\n"
            "store = open_store('gs://private/photos', token='metadata', "
            f"endpoint={storage.url!r})\n"
            "print([o.uri for o in list_images(store)])"
        )
        env = {**os.environ, "GCE_METADATA_HOST": host, "GCE_METADATA_IP": host}
        env.pop("STORAGE_EMULATOR_HOST", None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert "gs://private/photos/a.jpg" in out.stdout
        assert any("service-accounts/default/token" in path for _, path, _, _ in md.requests)


def test_anonymous_sends_no_credentials_and_is_refused_by_a_private_bucket(gcs, photos):
    before = len(gcs.proxy.requests)
    with pytest.raises(AccessDenied, match="not public"):
        list(list_images(photos, token="anon"))
    assert _bearers(gcs.proxy, before) == {None}


class _Connections:
    """Every host this process opens a connection to (at the socket layer, nothing replaced)."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    def audit(self, event: str, args: tuple) -> None:
        if event == "socket.connect":
            address = args[1]
            self.hosts.append(str(address[0]) if isinstance(address, tuple) else str(address))
        elif event == "socket.getaddrinfo":
            self.hosts.append(str(args[0]))


@pytest.fixture(scope="module")
def connections():
    seen = _Connections()
    sys.addaudithook(seen.audit)  # audit hooks cannot be removed: they just stop being read
    return seen


def test_real_gcs_without_credentials_stops_fast_and_sends_nothing(
    no_google_credentials, connections
):
    before = len(connections.hosts)
    started = time.monotonic()
    with pytest.raises(AuthError) as err:
        list(list_images("gs://some-bucket/photos"))
    elapsed = time.monotonic() - started
    message = str(err.value)
    assert elapsed < 15, elapsed
    assert "No Google credentials found" in message and "\n" not in message
    for fix in ("gcloud auth application-default login", "auth.authenticate_user()", "key"):
        assert fix in message
    assert not [h for h in connections.hosts[before:] if "storage" in h or "googleapis" in h]


def test_real_gcs_with_a_key_in_the_environment_uses_that_account(
    no_google_credentials, key_file, oauth, monkeypatch, connections
):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    before = len(connections.hosts)
    store = open_store("gs://some-bucket/photos")  # no endpoint: Google's own URL
    assert store.endpoint is None
    assert store.identity.description == f"service account {EMAIL}"
    assert any(b"jwt-bearer" in body for _, _, _, body in oauth.requests)  # the token was asked
    assert not [h for h in connections.hosts[before:] if "googleapis" in h]  # storage untouched


def test_a_local_endpoint_without_any_credentials_goes_anonymous_and_says_so(
    no_google_credentials, emulator
):
    store = open_store("gs://b/photos", endpoint=emulator.url)
    assert store.identity.anonymous
    assert "anonymous" in store.identity.description and "local" in store.identity.description


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
    with pytest.raises(AuthError, match=fragment) as err:
        resolve(str(key))
    assert "'key.json'" in str(err.value)


def test_bad_key_in_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(AuthError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        resolve(None)


@pytest.mark.parametrize("form", ["dict", "json-text"])
def test_secrets_stay_out_of_reprs_errors_and_tracebacks(sa_info, form):
    ident = resolve(sa_info)
    assert "PRIVATE KEY" not in repr(ident) and "PRIVATE KEY" not in str(ident)
    broken = dict(sa_info, private_key="-----BEGIN PRIVATE KEY-----\nsecretstuff\n")
    token = broken if form == "dict" else json.dumps(broken)
    with pytest.raises(AuthError) as err:
        resolve(token)
    chain = [err.value, err.value.__cause__, err.value.__context__]
    assert not any("secretstuff" in str(e) for e in chain if e is not None)
    if form == "json-text":
        assert "The key passed as JSON text" in str(err.value)


def test_a_secret_given_where_a_path_belongs_is_never_printed():
    with pytest.raises(AuthError) as err:
        resolve("ya29.a0AfB_byC-some-access-token-value")
    assert "ya29" not in str(err.value) and "a 38-character value" in str(err.value)


def test_a_store_pickles_its_recipe_never_its_secret(gcs, photos, key_file, sa_info):
    by_path = open_store(photos, token=key_file)
    blob = pickle.dumps(by_path)
    assert b"PRIVATE KEY" not in blob and ACCESS_TOKEN.encode() not in blob
    again = pickle.loads(blob)
    assert again.url == photos and again.identity.description == by_path.identity.description
    assert _read_all(again.url, again) == {"a.jpg": b"A", "b [1].png": b"B"}
    by_adc = pickle.loads(pickle.dumps(open_store(photos)))
    assert by_adc.identity.recipe == "adc"
    with pytest.raises(AuthError, match="cannot be sent to other processes"):
        pickle.dumps(open_store(photos, token=sa_info))


def test_unknown_token_type():
    with pytest.raises(AuthError, match="token must be"):
        resolve(42)


def test_identity_passes_through():
    ident = Identity("anon", "anonymous")
    assert resolve(ident) is ident


def test_the_connections_audit_sees_real_connections(connections):
    before = len(connections.hosts)
    with socket.socket() as s, pytest.raises(OSError):
        s.connect(("127.0.0.1", 9))
    assert "127.0.0.1" in connections.hosts[before:]
