"""The notebooks' promises that nbval does not check: the front-door cells, metadata, no secrets.

nbval (see pyproject.toml) runs every notebook on the embedded default and compares outputs.
What it cannot see is checked here: each notebook opens in Colab (only 02 on a GPU), has an install
cell, a sign-in cell and a ``parameters`` cell, was stored after one top-to-bottom run, and keeps
no credential in any output. The Colab and Workbench branches of the install and sign-in cells
cannot run in CI for real, so they run here against stand-ins: a fake ``google.colab`` module, a
fake ``%pip``, and a loopback metadata server.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest
from servers import StubServer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPO = "github.com/gcsemb/gcsemb"
# What a leaked credential looks like: OAuth access/refresh tokens, private keys, API keys,
# key-file fields, and a Jupyter server token in a URL.
SECRET = re.compile(
    r"ya29\.|1//[0-9A-Za-z_-]{20,}|-----BEGIN [A-Z ]*PRIVATE KEY|AIza[0-9A-Za-z_-]{30,}|"
    r"\"(private_key|client_secret|refresh_token|access_token)\"|[?&]token=[0-9a-f]{16,}"
)

BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def _code(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _install_cell(path: Path) -> str:
    return _code(nbformat.read(path, as_version=4))[0].source


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.name)
def notebook(request: pytest.FixtureRequest) -> tuple[Path, nbformat.NotebookNode]:
    return request.param, nbformat.read(request.param, as_version=4)


def test_the_expected_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {
        "01_list_bucket.ipynb",
        "02_embed_on_gpu.ipynb",
        "03_save_and_load_parquet.ipynb",
        "04_visualize_umap.ipynb",
    } <= names


def test_opens_in_colab_and_only_the_embedding_notebook_asks_for_a_gpu(notebook):
    path, nb = notebook
    badge = (
        "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/{REPO.replace('github.com', 'github')}"
        f"/blob/main/notebooks/{path.name})"
    )
    assert badge in nb.cells[0].source
    gpu = path.name.startswith("02_")  # the others list, read and plot: a CPU runtime is enough
    assert (nb.metadata.get("accelerator") == "GPU") == gpu
    assert (nb.metadata.get("colab", {}).get("gpuType") == "T4") == gpu
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_install_sign_in_and_parameters_cells(notebook):
    _, nb = notebook
    code = _code(nb)
    assert 'importlib.util.find_spec("gcsemb")' in code[0].source  # the install cell first
    assert f"git+https://{REPO}" in code[0].source
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters` (papermill injects after it)"
    assert re.search(r"^SRC = None\b", tagged[0].source, re.M)  # the default needs no account
    assert any("nb.authenticate(SRC, TOKEN)" in c.source for c in code)
    assert any("nb.setup(SRC" in c.source for c in code)


def test_stored_outputs_come_from_one_clean_run(notebook):
    path, nb = notebook
    code = _code(nb)
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"run {path.name} top to bottom: make notebooks"
    for i, cell in enumerate(code):
        kinds = [o.output_type for o in cell.outputs]
        assert "error" not in kinds, f"cell {i} of {path.name} raised"
        stderr = [o.text for o in cell.outputs if o.get("name") == "stderr"]
        assert not stderr, f"cell {i} of {path.name} wrote to stderr: {stderr}"


def _texts(node: object) -> list[str]:
    """Every string in a notebook's JSON, except base64 image data (random-looking bytes)."""
    if isinstance(node, dict):
        return [t for value in node.values() for t in _texts(value)]
    if isinstance(node, list):
        return [t for value in node for t in _texts(value)]
    if isinstance(node, str) and not (len(node) > 200 and BASE64.fullmatch(node)):
        return [node]
    return []


def test_no_credentials_in_stored_notebooks(notebook):
    path, _ = notebook
    text = "\n".join(_texts(json.loads(path.read_text())))  # outputs, widget state, metadata
    found = SECRET.search(text)
    assert found is None, f"{path.name} holds something like a credential: {found.group(0)!r}"


# ---------------------------------------------------------------- the install cell, everywhere


class FakeShell:
    """Stands in for IPython's ``get_ipython()``: records ``%pip`` instead of installing."""

    def __init__(self) -> None:
        self.magics: list[tuple[str, str]] = []

    def run_line_magic(self, name: str, line: str) -> None:
        self.magics.append((name, line))


def _run_install_cell(source: str, monkeypatch, *, installed: bool) -> FakeShell:
    from IPython.core.inputtransformer2 import TransformerManager

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (real(name, *a) if installed else None) if name == "gcsemb" else real(name)
        ),
    )
    shell = FakeShell()
    exec(TransformerManager().transform_cell(source), {"get_ipython": lambda: shell})
    return shell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_does_nothing_where_gcsemb_is_installed(path, monkeypatch, capsys):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")  # even in Colab
    shell = _run_install_cell(_install_cell(path), monkeypatch, installed=True)
    assert shell.magics == []
    assert (
        capsys.readouterr().out
        == "gcsemb is already installed in this kernel: nothing to install.\n"
    )


def test_install_cell_in_colab_installs_from_github_and_keeps_torch(monkeypatch, tmp_path):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    monkeypatch.chdir(tmp_path)
    shell = _run_install_cell(_install_cell(NOTEBOOKS[0]), monkeypatch, installed=False)
    assert shell.magics == [("pip", f'install -q "gcsemb[notebook,demo] @ git+https://{REPO}"')]
    assert "torch" not in shell.magics[0][1]  # Colab's own CUDA torch stays


def test_install_cell_in_a_workbench_kernel_from_environment_yml(monkeypatch, tmp_path):
    # the conda env holds every dependency; only gcsemb is missing, from GitHub as in Colab
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.chdir(tmp_path)
    shell = _run_install_cell(_install_cell(NOTEBOOKS[0]), monkeypatch, installed=False)
    assert shell.magics == [("pip", f'install -q "gcsemb[notebook,demo] @ git+https://{REPO}"')]


def test_install_cell_in_a_clone_installs_that_clone(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")  # where Jupyter runs a notebook of the repository
    shell = _run_install_cell(_install_cell(NOTEBOOKS[0]), monkeypatch, installed=False)
    assert shell.magics == [("pip", 'install -q -e "..[notebook,demo]"')]


# ---------------------------------------------------------------- the sign-in cell, everywhere


def test_sign_in_without_a_bucket_needs_nothing(capsys, monkeypatch):
    from gcsemb import notebook as nb

    colab = types.SimpleNamespace(authenticate_user=lambda: pytest.fail("no sign-in needed"))
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(auth=colab))
    assert nb.authenticate(None) is None
    assert "no sign-in needed" in capsys.readouterr().out


def test_sign_in_in_colab_runs_authenticate_user_once(
    monkeypatch, tmp_path, sa_info, no_google_credentials, capsys
):
    from gcsemb import notebook as nb

    key = tmp_path / "adc.json"
    key.write_text(json.dumps(sa_info))
    calls = []

    def authenticate_user() -> None:  # Colab's pop-up, then ADC is available
        calls.append(1)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))

    colab = types.ModuleType("google.colab")
    colab.auth = types.SimpleNamespace(authenticate_user=authenticate_user)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.auth", colab.auth)
    assert nb.in_colab()
    identity = nb.authenticate("gs://my-bucket/photos")
    assert calls == [1]
    out = capsys.readouterr().out
    assert out == (
        "gcsemb will access gs://my-bucket as: "
        "service account embedder@demo-project.iam.gserviceaccount.com\n"
    )
    assert sa_info["private_key"] not in out + repr(identity)
    assert "Runtime > Change runtime type" in nb.hardware() or "GPU:" in nb.hardware()


def _metadata_server(request, body):
    """The metadata server of a Workbench VM, as google-auth probes and queries it."""
    headers = [("Metadata-Flavor", "Google"), ("Content-Type", "application/json")]
    if request.path.endswith("/token") or "/token?" in request.path:
        payload = {"access_token": "ya29.metadata-token", "expires_in": 3600}
    elif "service-accounts/default" in request.path:
        payload = {
            "email": "workbench-sa@proj.iam.gserviceaccount.com",
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "aliases": ["default"],
        }
    elif "project-id" in request.path:
        return 200, ([("Metadata-Flavor", "Google"), ("Content-Type", "text/plain")], b"proj")
    else:
        payload = {}
    return 200, (headers, json.dumps(payload).encode())


def test_sign_in_on_workbench_uses_the_vms_service_account(tmp_path):
    # google-auth reads the metadata host at import, as on a VM: a fresh process
    with StubServer(_metadata_server) as md:
        host = md.url.removeprefix("http://")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")
            and not k.startswith("COLAB")
        }
        env.update(
            HOME=str(tmp_path),
            CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
            GCE_METADATA_HOST=host,
            GCE_METADATA_IP=host,
        )
        code = "from gcsemb import notebook as nb; nb.authenticate('gs://team-bucket/photos')"
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("gcsemb will access gs://team-bucket as: the VM's service account")
    assert "ya29" not in out.stdout + out.stderr


def test_setup_with_a_bucket_starts_nothing_and_needs_named_weights(gcs):
    from gcsemb import notebook as nb

    s = nb.setup("gs://my-bucket/photos")
    assert (s.src.url, s.dst.url, s.model, s.pretrained) == (
        "gs://my-bucket/photos",
        "gs://my-bucket/embeddings",
        "ViT-B-32",
        "laion2b_s34b_b79k",
    )
    assert not s.demo and s.emulator is None
    s.close()  # nothing to stop, nothing printed
    with pytest.raises(ValueError, match="PRETRAINED"):
        nb.setup("gs://my-bucket/photos", model="ViT-L-14")  # never random weights by accident


# ------------------------------------------------------ on a real bucket: only parameters change


def _execute(path: Path, overrides: dict[str, object], cwd: Path) -> nbformat.NotebookNode:
    """Run a notebook as papermill would: the overrides go in a cell right after `parameters`."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    lines = "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"# injected parameters\n{lines}"))
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def _printed(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in _code(nb):
        for o in cell.outputs:
            out.append(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


@pytest.mark.slow
def test_notebooks_run_on_a_real_bucket_by_changing_only_the_parameters(
    gcs, bucket, tiny_ckpt, tmp_path
):
    # a private bucket laid out like a phone's camera roll: no PNG, no photos/ folder, no demo
    from PIL import Image

    from gcsemb.demo.samples import encode, sample_images
    from gcsemb.model.embedder import TINY_MODEL

    fs = gcs.filesystem()
    for i, (_, data) in enumerate(sample_images(24)):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        ext, fmt = [(".JPG", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")][i % 3]
        day = f"DCIM/2024-06-0{i % 4 + 1}"
        fs.pipe_file(f"{bucket}/{day}/IMG_{i:04d}{ext}", encode(image, fmt))
    fs.pipe_file(f"{bucket}/DCIM/2024-06-01/IMG_9999.JPG", b"\xff\xd8\xff truncated")
    src, dst = f"gs://{bucket}/DCIM", f"gs://{bucket}/embeddings"
    model = {"MODEL": TINY_MODEL, "PRETRAINED": tiny_ckpt}
    runs = {
        "01_list_bucket.ipynb": {"SRC": src},
        "02_embed_on_gpu.ipynb": {"SRC": src, "DST": dst, **model, "TRY_FIRST": 8},
        "03_save_and_load_parquet.ipynb": {"SRC": src, "DST": dst, **model},
        "04_visualize_umap.ipynb": {"SRC": src, "DST": dst, **model, "QUERY": "a cat"},
        "00_quickstart.ipynb": {"SRC": src, "DST": dst, **model},
    }
    printed = {}
    for name, overrides in runs.items():
        printed[name] = _printed(_execute(ROOT / "notebooks" / name, overrides, tmp_path))
    identity = "service account embedder@demo-project.iam.gserviceaccount.com"
    assert all(identity in text for text in printed.values())  # the user's ADC, never the demo
    assert f"25 images under {src}" in printed["01_list_bucket.ipynb"]
    assert "**/*.JPG" in printed["01_list_bucket.ipynb"]  # the bucket's own most common type
    assert "A real bucket: nothing uploaded" in printed["03_save_and_load_parquet.ipynb"]
    assert "2024-06-01" in printed["03_save_and_load_parquet.ipynb"]  # folders from the data
    assert "0 embedded, 25 skipped" in printed["00_quickstart.ipynb"]  # 02 did the work


# ------------------------------------------------------------ the demo's emulator stays the demo's


def test_the_demo_never_captures_a_real_bucket(monkeypatch, capsys):
    from gcsemb import notebook as nb
    from gcsemb.storage import open_store

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    before = dict(os.environ)
    demo = nb.setup(n_images=4)
    again = nb.setup(n_images=4)  # a notebook re-run: the same emulator, not a second one
    try:
        assert again.emulator is demo.emulator and demo.emulator.running
        assert demo.src.endpoint == demo.emulator.url  # the demo's own handles reach it
        assert dict(os.environ) == before  # nothing process-wide points at it
        real = open_store("gs://my-real-bucket/photos", token="anon")
        assert real.endpoint is None  # a real bucket goes to Google, demo or no demo
        assert "storage.googleapis.com" in real.fs._location
    finally:
        demo.close()
    assert not demo.emulator and not again.emulator.running
    third = nb.setup(n_images=4)  # after close(): a fresh one
    assert third.emulator.running
    third.close()


def test_the_emulator_dies_with_the_process_that_started_it(tmp_path):
    code = (
        "import os, time\n"
        "from gcsemb.demo.emulator import Emulator\n"
        "e = Emulator().start()\n"
        "print(e._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(child, 0)  # running
    parent.kill()  # a kernel killed hard: no atexit, no cleanup code runs
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the emulator outlived the process that started it")
