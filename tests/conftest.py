"""Shared fixtures: GCS as a private bucket sees it, and loopback stand-ins for Google.

The default storage of the tests (``gcs``) is an *auth-demanding front*: a loopback proxy in
front of fake-gcs-server that answers only requests bearing the access token which a loopback
OAuth endpoint grants after a real service-account JWT exchange. The tests reach it the way a user
reaches a private bucket: ``STORAGE_EMULATOR_HOST`` changes only the URL, and the credentials are
application default credentials (``GOOGLE_APPLICATION_CREDENTIALS`` names a key file), found and
sent through exactly the code real GCS gets.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Before anything imports gcsfs (see gcsemb.storage).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from servers import new_pem, service_account  # noqa: E402

from gcsemb.demo.emulator import Emulator  # noqa: E402

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The bare fake-gcs-server: anonymous, for uploading test data and for the demo's flow."""
    with Emulator() as server:
        yield server


@dataclass
class PrivateGCS:
    """The default test storage: the auth-demanding front and how the tests reach it."""

    url: str  # the front's endpoint (what STORAGE_EMULATOR_HOST names)
    emulator: Emulator
    proxy: Any  # servers.GatewayProxy: its .requests record every request it saw
    oauth: Any  # servers.StubServer: the token endpoint, its .requests every exchange
    key_file: str  # the service-account key that GOOGLE_APPLICATION_CREDENTIALS names

    def filesystem(self) -> Any:
        """An anonymous filesystem straight to the emulator, to set up test data."""
        return self.emulator.filesystem()


@pytest.fixture(scope="session")
def gcs(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateGCS]:
    """A private bucket's GCS: the front accepts only the token issued for our key (ADC)."""
    from servers import ACCESS_TOKEN, GatewayProxy, StubServer, token_endpoint

    key_file = tmp_path_factory.mktemp("adc") / "key.json"
    with StubServer(token_endpoint(ACCESS_TOKEN)) as oauth:
        key_file.write_text(json.dumps(service_account(new_pem(), f"{oauth.url}/token")))
        with (
            GatewayProxy(emulator.url, token=ACCESS_TOKEN) as proxy,
            pytest.MonkeyPatch.context() as mp,
        ):
            mp.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
            yield PrivateGCS(proxy.url, emulator, proxy, oauth, str(key_file))


@pytest.fixture
def bucket(gcs: PrivateGCS) -> str:
    """A fresh, empty bucket name on the emulator."""
    name = f"test-bucket-{os.getpid()}-{next(_bucket_ids)}"
    gcs.filesystem().mkdir(name)
    return name


@pytest.fixture
def no_google_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine with no Google credentials anywhere and no metadata server."""
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST", "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # closed port: refused at once
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("NO_GCE_CHECK", "true")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny open_clip model with seeded random weights, saved as a user's checkpoint would be."""
    from gcsemb.model.embedder import TINY_MODEL, save_random_checkpoint

    os.environ.setdefault("GCSEMB_CACHE", str(tmp_path_factory.mktemp("gcsemb-cache")))
    return str(save_random_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY_MODEL))


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    """A real RSA key, as in a downloaded service-account JSON key."""
    return new_pem()


@pytest.fixture
def oauth():
    """Google's OAuth token endpoint, on loopback: grants ACCESS_TOKEN to any signed JWT."""
    from servers import ACCESS_TOKEN, StubServer, token_endpoint

    with StubServer(token_endpoint(ACCESS_TOKEN)) as server:
        yield server


@pytest.fixture
def sa_info(private_key_pem, oauth) -> dict:
    """A fresh service-account key whose token_uri points at this test's OAuth endpoint."""
    return service_account(private_key_pem, f"{oauth.url}/token")


@pytest.fixture
def key_file(sa_info, tmp_path) -> str:
    """``sa_info`` saved as a key file."""
    path = tmp_path / "key.json"
    path.write_text(json.dumps(sa_info))
    return str(path)
