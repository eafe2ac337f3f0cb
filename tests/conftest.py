"""Shared fixtures: a real GCS emulator (fake-gcs-server) and loopback stand-ins for Google."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

# Before anything imports gcsfs (see gcsemb.emulator).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from gcsemb.emulator import Emulator  # noqa: E402

_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def gcs() -> Iterator[Emulator]:
    """One fake-gcs-server for the whole session; STORAGE_EMULATOR_HOST points at it."""
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def bucket(gcs: Emulator) -> str:
    """A fresh, empty bucket name on the emulator."""
    name = f"test-bucket-{os.getpid()}-{next(_bucket_ids)}"
    gcs.filesystem().mkdir(name)
    return name


@pytest.fixture
def no_google_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
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
    from gcsemb.embedder import TINY_MODEL, save_random_checkpoint

    os.environ.setdefault("GCSEMB_CACHE", str(tmp_path_factory.mktemp("gcsemb-cache")))
    return str(save_random_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY_MODEL))


@pytest.fixture(scope="session")
def private_key_pem() -> str:
    """A real RSA key, as in a downloaded service-account JSON key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def oauth():
    """Google's OAuth token endpoint, on loopback: grants ACCESS_TOKEN to any signed JWT."""
    from servers import ACCESS_TOKEN, StubServer, token_endpoint

    with StubServer(token_endpoint(ACCESS_TOKEN)) as server:
        yield server


@pytest.fixture
def sa_info(private_key_pem, oauth) -> dict:
    """A service-account key whose token_uri points at the loopback OAuth endpoint."""
    return {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "0123456789abcdef",
        "private_key": private_key_pem,
        "client_email": "embedder@demo-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": f"{oauth.url}/token",
    }
