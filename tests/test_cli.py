"""The `gcsemb` command as a user runs it: real entry point, real emulator, one-line errors."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import StubServer, deny

GCSEMB = str(Path(sys.executable).parent / "gcsemb")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GCSEMB, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def photos(gcs, bucket):
    names = ["a/cat 1.jpg", "a/dog #2.png", "b/ünï.webp", "b/readme.txt"]
    gcs.filesystem().pipe({f"{bucket}/{n}": n.encode() for n in names})
    return f"gs://{bucket}"


def test_list_jsonl(photos):
    out = run("list", photos, "--format", "jsonl")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["uri"] for r in rows] == [
        f"{photos}/a/cat 1.jpg",
        f"{photos}/a/dog #2.png",
        f"{photos}/b/ünï.webp",
    ]
    assert all({"uri", "size", "md5", "generation"} <= r.keys() for r in rows)
    assert rows[0]["size"] == len(b"a/cat 1.jpg")


def test_list_csv_table_and_limit(photos):
    rows = list(csv.DictReader(io.StringIO(run("list", photos, "--format", "csv").stdout)))
    assert len(rows) == 3 and rows[0]["md5"]
    table = run("list", f"{photos}/**/*.png")
    assert table.stdout.splitlines()[0].split() == ["SIZE", "UPDATED", "URI"]
    assert table.stdout.count("gs://") == 1 and "dog #2.png" in table.stdout
    assert "1 images" in table.stderr
    limited = run("list", photos, "--format", "jsonl", "--limit", "2")
    assert len(limited.stdout.splitlines()) == 2


def test_list_all_files(photos):
    out = run("list", photos, "--all-files", "--format", "jsonl")
    assert len(out.stdout.splitlines()) == 4


def _assert_one_line_error(out: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("gcsemb: error:") and fragment in lines[0]
    assert "Traceback" not in out.stderr


def test_error_missing_bucket(gcs):
    _assert_one_line_error(run("list", "gs://no-such-bucket-here"), "does not exist")


def test_error_bad_url(gcs):
    _assert_one_line_error(run("list", "gs://"), "names no bucket")


def test_error_bad_key_file(tmp_path):
    key = tmp_path / "key.json"
    key.write_text("{oops")
    out = run("list", "gs://x/y", "--token", str(key), env={"STORAGE_EMULATOR_HOST": ""})
    _assert_one_line_error(out, "is not a JSON key file")


def test_error_denied(gcs):
    with StubServer(deny(403)) as server:
        out = run("list", "gs://private/photos", env={"STORAGE_EMULATOR_HOST": server.url})
    _assert_one_line_error(out, "may not list gs://private/photos")
    assert "roles/storage.objectViewer" in out.stderr


def test_debug_shows_traceback(gcs):
    out = run("list", "gs://no-such-bucket-here", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_help_teaches():
    out = run("--help")
    assert out.returncode == 0
    for word in ("list", "embed", "demo", "examples:", "--token"):
        assert word in out.stdout
    assert "--format" in run("list", "--help").stdout


@pytest.mark.slow
def test_demo_runs_offline(tmp_path):
    out = run(
        "demo",
        "--images",
        "20",
        env={"STORAGE_EMULATOR_HOST": "", "GCSEMB_CACHE": str(tmp_path / "cache")},
    )
    assert out.returncode == 0, out.stderr
    assert "24 images seen" in out.stdout and "3 failed" in out.stdout
    assert "RANDOM weights" in out.stdout and "0 embedded, 24 skipped" in out.stdout


def _command_names() -> list[str]:
    from gcsemb.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(commands.choices)


def _help(capsys, *argv: str) -> str:
    from gcsemb.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_command_help_has_examples(capsys):
    names = _command_names()
    assert {"list", "check", "embed", "demo", "umap", "search"} <= set(names)
    for name in names:
        out = _help(capsys, name)
        assert "example" in out, name
        assert "exit status" in out, name


def test_help_explains_embed_output_and_credentials(capsys):
    from gcsemb.errors import READ_ROLE, WRITE_ROLE

    embed = _help(capsys, "embed")
    for phrase in ("--format json", "bounds", "--wait", "--retry-failed", "--decode", "throughput"):
        assert phrase in embed, phrase
    assert READ_ROLE in embed and WRITE_ROLE in embed
    top = _help(capsys)
    for phrase in ("anon", '"$KEY_JSON"', "metadata", "colab", "STORAGE_EMULATOR_HOST"):
        assert phrase in top, phrase
    assert READ_ROLE in top and WRITE_ROLE in top
    assert "--pretrained" in _help(capsys, "search")


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "gcsemb.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "examples:" in out.stdout


def test_embed_defaults_are_the_configs_and_its_help_shows_them(capsys):
    from gcsemb.cli import build_parser
    from gcsemb.cli.embed import engine_of, settings_of
    from gcsemb.embedding.config import EmbedConfig

    args = build_parser().parse_args(["embed", "src", "dst"])
    chosen = EmbedConfig(model=args.model, pretrained=args.pretrained, **settings_of(args))
    assert chosen == EmbedConfig() and engine_of(args) == "local"
    embed = " ".join(_help(capsys, "embed").split())
    for shown in ("(default: ViT-B-32)", "(default: laion2b_s34b_b79k)", "(default: 4)"):
        assert shown in embed, shown
    assert "(default: 32 on a CPU, 256 on a GPU)" in embed and "(default: 256 MiB)" in embed
