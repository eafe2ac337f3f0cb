"""A credential is never echoed, and goes only where it belongs.

- A key pasted in any form (raw or BOM JSON, base64, a bare PEM, JSON text in
  ``GOOGLE_APPLICATION_CREDENTIALS``) either works or is refused naming only its form and length:
  no piece of it reaches an exception or the CLI's stderr.
- ``--token -`` reads the key from stdin, out of every process listing.
- A checkpoint URL's password and signature never reach the dataset, a log, a message or a repr.
- Credentials found on this machine are not sent to an endpoint that is neither Google nor on
  this machine (``STORAGE_EMULATOR_HOST`` set by someone else).
- DST is reached with exactly the access SRC was given.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import secrets
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from servers import (
    ACCESS_TOKEN,
    SERVICE_ACCOUNT,
    StubServer,
    new_pem,
    private_bucket,
    service_account,
)

from gcsemb.errors import AccessDenied, AuthError
from gcsemb.storage import list_images, open_store
from gcsemb.storage.auth import resolve

EMAIL = "embedder@demo-project.iam.gserviceaccount.com"
OTHER = "other@demo-project.iam.gserviceaccount.com"


@pytest.fixture
def photos(gcs, bucket):
    gcs.filesystem().pipe({f"{bucket}/photos/a.jpg": b"A", f"{bucket}/photos/b.png": b"B"})
    return f"gs://{bucket}/photos"


def _cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "gcsemb.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


def _pieces(secret: str, width: int = 10) -> set[str]:
    """Every ``width``-character window of ``secret``'s text (blanks and escapes left out)."""
    bare = "".join(secret.replace("\\n", "\n").split())
    return {bare[i : i + width] for i in range(0, max(1, len(bare) - width + 1), 3)}


def _bearer(headers: dict[str, str]) -> str | None:
    return {k.lower(): v for k, v in headers.items()}.get("authorization")


def _pem_body(pem: str) -> str:
    return "".join(line for line in pem.splitlines() if "-----" not in line)


def _shown(error: BaseException) -> str:
    """All a user may see of an exception: its text and the traceback of its chain."""
    return str(error) + "".join(traceback.format_exception(error))


def _pasted_forms(sa_info: dict) -> dict[str, tuple[str, str, str]]:
    """``form -> (how it is given, the value, the secret in it)`` for keys that cannot work."""
    broken_key = "-----BEGIN PRIVATE KEY-----\n" + secrets.token_urlsafe(96) + "\n-----END"
    broken = json.dumps(dict(sa_info, private_key=broken_key), indent=2)
    text = json.dumps(sa_info)
    body = _pem_body(sa_info["private_key"])
    b64 = base64.b64encode(text.encode()).decode()
    refresh = "1//0g" + secrets.token_urlsafe(60)
    return {
        "raw-json-unusable": ("token", broken, broken_key),
        "bom-json-unusable": ("token", "\ufeff" + broken, broken_key),
        "base64-json": ("token", b64, b64),
        "bare-pem": ("token", sa_info["private_key"], body),
        "refresh-token": ("token", refresh, refresh),
        "adc-variable-json-unusable": ("adc", broken, broken_key),
        "adc-variable-base64": ("adc", b64, b64),
        "adc-variable-pem": ("adc", sa_info["private_key"], body),
    }


FORMS = [
    "raw-json-unusable",
    "bom-json-unusable",
    "base64-json",
    "bare-pem",
    "refresh-token",
    "adc-variable-json-unusable",
    "adc-variable-base64",
    "adc-variable-pem",
]


@pytest.mark.parametrize("form", FORMS)
def test_a_pasted_key_never_reaches_an_error_or_the_cli(form, gcs, sa_info, monkeypatch):
    how, value, secret = _pasted_forms(sa_info)[form]
    if how == "adc":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", value)
    token = value if how == "token" else None
    with pytest.raises(AuthError) as err:
        resolve(token, local_endpoint=True)
    shown = _shown(err.value)
    assert not [p for p in _pieces(secret) if p in shown]
    if "unusable" not in form:  # refused for its form: named by it and its length only
        assert f"a {len(value):,}-character value" in str(err.value)
        assert "What works:" in str(err.value) and "\n" not in str(err.value)
    if how == "adc":
        assert "GOOGLE_APPLICATION_CREDENTIALS" in str(err.value)
    args = ["list", "gs://some-bucket/photos"] + (["--token", value] if how == "token" else [])
    out = _cli(*args, env={"GOOGLE_APPLICATION_CREDENTIALS": value} if how == "adc" else None)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()  # the error, after a warning for key text in argv
    assert lines[-1].startswith("gcsemb: error: ") and len(lines) <= 2, out.stderr
    assert not [p for p in _pieces(secret) if p in out.stderr + out.stdout]


@pytest.mark.parametrize(
    "form", ["bom-json", "bom-key-file", "adc-variable-json", "adc-variable-bom-json"]
)
def test_pasted_key_forms_that_hold_a_whole_key_work(
    form, gcs, photos, sa_info, oauth, monkeypatch, tmp_path
):
    text = json.dumps(sa_info, indent=2)
    token = None
    if form == "bom-json":
        token = "\ufeff" + text
    elif form == "bom-key-file":  # as Notepad saves it
        path = tmp_path / "key.json"
        path.write_text("\ufeff" + text, encoding="utf-8")
        token = str(path)
    else:
        bom = "\ufeff" if "bom" in form else ""
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", bom + text + "\n")
    before = len(gcs.proxy.requests)
    store = open_store(photos, token=token)
    assert store.identity.description == f"service account {EMAIL}"
    assert [o.uri.rsplit("/", 1)[1] for o in list_images(store)] == ["a.jpg", "b.png"]
    bearers = {_bearer(h) for _, _, h, _ in gcs.proxy.requests[before:]}
    assert bearers == {f"Bearer {ACCESS_TOKEN}"}
    if token is None:  # the key in the variable is exchanged once, however often it is used
        open_store(photos)
        assert len(oauth.requests) == 1


def test_token_dash_reads_the_key_from_stdin(gcs, photos, sa_info):
    no_adc = {"GOOGLE_APPLICATION_CREDENTIALS": ""}
    key = json.dumps(sa_info)
    out = _cli("list", photos, "--format", "jsonl", "--token", "-", env=no_adc, stdin=key)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["uri"] for line in out.stdout.splitlines()] == [
        f"{photos}/a.jpg",
        f"{photos}/b.png",
    ]
    assert not [p for p in _pieces(sa_info["private_key"]) if p in out.stderr]
    without = _cli("list", photos, env=no_adc)  # the stdin key, not something else, let us in
    assert without.returncode == 1 and "not public" in without.stderr
    empty = _cli("list", photos, "--token", "-", env=no_adc, stdin="")
    assert empty.returncode == 2 and "stdin" in empty.stderr
    # key text on the command line still works, with a warning that names the better ways
    argv = _cli("list", photos, "--token", key, env=no_adc)
    assert argv.returncode == 0 and "--token -" in argv.stderr and "process listing" in argv.stderr
    assert not [p for p in _pieces(_pem_body(sa_info["private_key"])) if p in argv.stderr]
    top = _cli("--help").stdout
    assert "--token -" in top and 'Prefer this or a key file over --token "$KEY_JSON"' in top
    listing_help = " ".join(_cli("list", "--help").stdout.split())
    assert "'-' to read the key's JSON from stdin" in listing_help


# --- a checkpoint URL's password and signature ------------------------------------------------

PASSWORD, SIGNATURE = "pw-" + secrets.token_hex(8), "sig" + secrets.token_hex(12)


@pytest.fixture
def signed_checkpoint(tiny_ckpt):
    """A checkpoint behind basic auth and a signature: ``(url, wrong_url, server)``."""
    data = Path(tiny_ckpt).read_bytes()
    basic = "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()

    def serve(request, body):
        if request.headers.get("Authorization") != basic or SIGNATURE not in request.path:
            return 401, {"error": "who are you?"}
        headers = [("Content-Type", "application/octet-stream"), ("ETag", '"v1"')]
        return 200, (headers, data)

    with StubServer(serve) as server:
        host = server.url.removeprefix("http://")
        query = f"X-Goog-Signature={SIGNATURE}&X-Goog-Credential=sa%40p"
        yield (
            f"http://me:{PASSWORD}@{host}/models/m.pt?{query}#frag",
            f"http://me:wrong-{PASSWORD}@{host}/models/m.pt?{query}",
            server,
        )


def _no_secret(text: str) -> bool:
    return PASSWORD not in text and SIGNATURE not in text and "me:" not in text


def test_a_checkpoint_url_keeps_no_password_or_signature(
    signed_checkpoint, gcs, bucket, tmp_path, monkeypatch, caplog
):
    import io

    from PIL import Image

    from gcsemb.embedding.job import embed
    from gcsemb.model.checkpoints import model_tag
    from gcsemb.model.embedder import TINY_MODEL
    from gcsemb.notebook import setup

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    url, wrong, server = signed_checkpoint
    photos, dst = f"gs://{bucket}/photos", tmp_path / "emb"
    for i, color in enumerate(("red", "blue")):
        jpeg = io.BytesIO()
        Image.new("RGB", (40, 30), color).save(jpeg, "JPEG")
        gcs.filesystem().pipe_file(f"{bucket}/photos/{i}.jpg", jpeg.getvalue())
    caplog.set_level(logging.DEBUG)
    embed(photos, str(dst), model=TINY_MODEL, pretrained=url, progress=False)
    assert server.requests  # the weights came through the URL, password and signature included
    (shard,) = dst.glob("*.parquet")
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(shard).metadata.items()}
    assert meta["gcsemb.checkpoint"] == f"{server.url}/models/m.pt"
    assert json.loads(meta["gcsemb.config"])["pretrained"] == f"{server.url}/models/m.pt"
    assert all(_no_secret(v) for v in meta.values())
    # gcsemb's own log lines, and every line a run shows without --debug
    shown = [r for r in caplog.records if r.name.startswith("gcsemb") or r.levelno >= logging.INFO]
    assert shown and all(_no_secret(r.getMessage()) for r in shown)
    session = setup(photos, str(dst), model=TINY_MODEL, pretrained=url)
    assert _no_secret(repr(session)) and _no_secret(session._repr_html_())
    assert f"{server.url}/models/m.pt" in repr(session)
    with pytest.raises(Exception) as err:  # refused: the message names the URL without secrets
        model_tag(TINY_MODEL, wrong)
    assert f"{server.url}/models/m.pt" in str(err.value) and _no_secret(_shown(err.value))


# --- where found credentials go ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "sent"),
    [
        (None, True),  # Google
        ("http://127.0.0.1:4443", True),  # an emulator on this machine
        ("localhost:4443", True),
        ("http://[::1]:4443", True),
        ("https://storage-psc.p.googleapis.com", True),  # Private Service Connect
        ("http://10.0.0.5:4443", False),  # someone's emulator, in clear
        ("https://gcs.example.com", False),
        ("http://storage.googleapis.com", False),  # not over http
        ("https://googleapis.com.evil.example", False),
        ("https://evilgoogleapis.com", False),
    ],
)
def test_which_endpoints_get_credentials_found_on_this_machine(endpoint, sent):
    from gcsemb.storage import receives_found_credentials

    assert receives_found_credentials(endpoint) is sent


def _loopback_name() -> str:
    """This machine's host name, when it reaches loopback without being spelled as loopback."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = ""
    if not address.startswith("127.") or name.lower() == "localhost":
        pytest.skip("this machine's host name does not resolve to a loopback address")
    return name


def test_a_remote_storage_emulator_host_gets_no_found_credentials(
    no_google_credentials, key_file, oauth, monkeypatch
):
    # the stand-in listens on loopback, but STORAGE_EMULATOR_HOST names it as another host
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key_file)
    with StubServer(private_bucket(ACCESS_TOKEN, ["photos/a.jpg"])) as server:
        port = server.url.rsplit(":", 1)[1]
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{_loopback_name()}:{port}")
        with pytest.raises(AccessDenied, match="not public") as err:
            list(list_images("gs://private/photos"))
        assert "credentials found on this machine are not sent to" in str(err.value)
        assert server.requests
        assert {_bearer(h) for _, _, h, _ in server.requests} == {None}
        store = open_store("gs://private/photos")
        who = store.identity.description
        assert "not sent to" in who and "--token" in who
        # passed explicitly for that endpoint, the same key is sent
        uris = [o.uri for o in list_images("gs://private/photos", token=key_file)]
        assert uris == ["gs://private/photos/a.jpg"]
        assert _bearer(server.requests[-1][2]) == f"Bearer {ACCESS_TOKEN}"


# --- DST gets exactly SRC's access -------------------------------------------------------------


@pytest.fixture
def other_key(tmp_path, oauth) -> str:
    path = tmp_path / "other.json"
    path.write_text(json.dumps(service_account(new_pem(), f"{oauth.url}/token", OTHER)))
    return str(path)


def test_dst_gets_exactly_the_access_a_local_src_was_given(
    gcs, bucket, other_key, tmp_path, monkeypatch, sa_info
):
    from gcsemb.embedding.run import open_stores

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # not where DST is
    photos = tmp_path / "photos"
    photos.mkdir()
    dst_url = f"gs://{bucket}/emb"
    access = dict(project="billing-project", requester_pays=True, endpoint=gcs.url)
    src, dst = open_stores(open_store(str(photos), token=other_key, **access), dst_url)
    assert dst.identity.description == f"service account {OTHER}"  # not the machine's ADC
    assert (dst.endpoint, dst.project, dst.requester_pays) == (
        gcs.url,
        "billing-project",
        True,
    )
    dst.fs.pipe_file(f"{dst.path}/probe", b"1")  # really reaches the bucket, as that identity
    assert gcs.filesystem().cat_file(f"{bucket}/emb/probe") == b"1"
    # the same after travelling to another process (Ray), and there and back through a folder
    again = pickle.loads(pickle.dumps(src)).at(dst_url)
    back = dst.at(str(tmp_path / "local")).at(dst_url)
    for store in (again, back):
        assert store.identity.description == f"service account {OTHER}"
        assert (store.endpoint, store.project, store.requester_pays) == (
            gcs.url,
            "billing-project",
            True,
        )
    keyed = pickle.loads(pickle.dumps(open_store(str(photos), token=sa_info)))
    with pytest.raises(AuthError, match="cannot be sent to other processes"):
        keyed.at(dst_url)
    # unless DST is given its own access: a Store of its own keeps it
    own = open_store(dst_url, token=sa_info, endpoint=gcs.url)
    _, dst = open_stores(open_store(str(photos), token=other_key, **access), own)
    assert dst.identity.description == f"service account {SERVICE_ACCOUNT}"
    assert (dst.project, dst.requester_pays) == (None, False)
    dst.fs.pipe_file(f"{dst.path}/own", b"2")
    assert gcs.filesystem().cat_file(f"{bucket}/emb/own") == b"2"
