"""Text a dataset (or a folder) holds is data: it never breaks a read or drives the terminal.

- ``gcsemb.*`` metadata that is not UTF-8 is read with replacement characters.
- URIs and file names with control characters (``\\x1b]0;...\\x07`` retitles a terminal,
  ``\\x1b[2J`` clears it) are printed escaped by the CLI, in tables and in log lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from gcsemb.embedding.job import embed
from gcsemb.explore.dataset import read_embeddings
from gcsemb.model.embedder import TINY_MODEL

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen


def _dataset(tmp_path: Path, names: list[str]) -> tuple[Path, Path]:
    """A local folder with one image per name, embedded with the tiny random model."""
    photos, dst = tmp_path / "photos", tmp_path / "emb"
    photos.mkdir()
    for i, name in enumerate(names):
        Image.new("RGB", (40, 30), (40 * i, 90, 200)).save(photos / name, "JPEG")
    embed(str(photos), str(dst), model=TINY_MODEL, pretrained=None, progress=False)
    return photos, dst


def test_metadata_that_is_not_utf8_is_read_with_replacement(tmp_path, monkeypatch):
    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    _, dst = _dataset(tmp_path, ["a.jpg", "b.jpg"])
    (shard,) = dst.glob("*.parquet")
    table = pq.read_table(shard)
    meta = dict(table.schema.metadata)
    meta[b"gcsemb.source"] = b"gs://bucket/caf\xe9"  # Latin-1, as another tool might write
    meta[b"gcsemb.note\xff"] = b"\xff\xfe"
    pq.write_table(table.replace_schema_metadata(meta), shard)
    df, matrix = read_embeddings(str(dst))
    assert len(df) == 2 and matrix.shape[0] == 2
    assert df.attrs["dataset"]["source"] == "gs://bucket/caf\ufffd"
    assert df.attrs["dataset"]["note\ufffd"] == "\ufffd\ufffd"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gcsemb.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "STORAGE_EMULATOR_HOST": ""},
    )


@pytest.mark.slow
def test_the_cli_escapes_control_characters_in_a_datasets_uris(tmp_path, monkeypatch):
    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    photos, dst = _dataset(tmp_path, [f"a{TITLE}.jpg", "b.jpg"])
    (dst / f"junk{CLEAR}.parquet").write_bytes(b"not parquet")  # a foreign file: a warning
    found = _cli("search", str(dst), "a photo", "-k", "2")
    assert found.returncode == 0, found.stderr
    listed = _cli("list", str(photos))
    assert listed.returncode == 0, listed.stderr
    for out in (found.stdout, found.stderr, listed.stdout, listed.stderr):
        assert "\x1b" not in out and "\x07" not in out
    assert "a\\x1b]0;pwned\\x07.jpg" in found.stdout  # escaped, still recognisable
    assert "a\\x1b]0;pwned\\x07.jpg" in listed.stdout
    assert "junk\\x1b[2J.parquet" in found.stderr  # the log line naming the foreign file
