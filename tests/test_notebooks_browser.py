"""A real browser runs notebook 04 in JupyterLab and sees the explorer widget render.

nbval checks what the kernel sends; this checks what a user sees. JupyterLab starts on loopback
with a random token, headless Chromium (Debian's package: Playwright cannot download browsers
here; `make test` installs it) opens a copy of ``notebooks/04_visualize_umap.ipynb``, runs every
cell through the Run menu, and the test waits for the explorer: its text box, result thumbnails
and UMAP map must be on the page, with no "Loading widget..." placeholder, no "Error displaying
widget" and no JavaScript error. The screenshot goes to ``.artifacts/browser/``.

The notebook is copied into a temporary folder first, so JupyterLab never writes to the repository
(autosave is off as well), and its settings, workspaces and runtime files live there too.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser  # needs the lab extra and chromium; make test-colab skips it

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "04_visualize_umap.ipynb"
ARTIFACTS = ROOT / ".artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
RUN_TIMEOUT_S = 420  # the whole notebook on 2 cores: about a minute, more on a cold cache
# JupyterLab settings for a quiet, deterministic page: no news pop-up, no autosave, all cells
# rendered (no windowing), so every output is in the DOM.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {
        "autosave": False,
        "autoStartDefaultKernel": True,  # no "Select Kernel" dialog
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _chromium() -> str | None:
    return os.environ.get("GCSEMB_CHROMIUM") or shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redact(text: str, token: str) -> str:
    return text.replace(token, "<token>")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """JupyterLab on 127.0.0.1 serving a copy of the notebooks; yields (url, token, log)."""
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
    settings = tmp_path / "settings"
    for name, values in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token = secrets.token_hex(24)
    port = _free_port()
    log = tmp_path / "jupyterlab.log"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",  # CI runs as root
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {_redact(log.read_text()[-2000:], token)}")
            if time.monotonic() > deadline:
                pytest.fail("JupyterLab did not answer within 90 s")
            request = urllib.request.Request(
                f"{url}/api/status", headers={"Authorization": f"token {token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        yield url, token, log
    finally:
        server.terminate()  # shuts the kernels down too
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _js_errors(messages: list[str]) -> list[str]:
    """Console errors that mean broken JavaScript, not a blocked network request.

    The badge image (colab.research.google.com) cannot load without internet; such
    "Failed to load resource" messages are the network, not the page.
    """
    return [m for m in messages if not m.startswith("Failed to load resource")]


def _menu(page: object, menu: str, item: str) -> None:
    """Click ``menu`` in JupyterLab's menu bar, then ``item`` in it."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(item)}$")).click()


def _accept_dialogs(page: object) -> None:
    """Accept a JupyterLab dialog if one is open (e.g. "Select Kernel" after a slow start)."""
    accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
    if accept.count():
        accept.first.click()


def _wait_for_kernel(page: object, timeout_s: float = 180) -> None:
    """Wait until the notebook's kernel is connected and idle (cold venvs start slowly)."""
    deadline = time.monotonic() + timeout_s
    status = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$"))
    while not status.count():
        _accept_dialogs(page)
        if time.monotonic() > deadline:
            pytest.fail(f"the kernel was not idle after {timeout_s:.0f} s")
        time.sleep(0.5)


@pytest.mark.slow
def test_explorer_widget_renders_in_jupyterlab(lab: tuple[str, str, Path]) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium executable: `make test` installs Debian's chromium (needs root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    url, token, log = lab
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / NOTEBOOK.replace(".ipynb", ".png")
    errors: list[str] = []
    console: list[str] = []

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.on("pageerror", lambda e: errors.append(_redact(str(e), token)))
            page.on(
                "console",
                lambda m: console.append(_redact(m.text, token)) if m.type == "error" else None,
            )
            page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            _wait_for_kernel(page)
            # clear the stored outputs first, so everything checked below is freshly rendered
            _menu(page, "Edit", "Clear Outputs of All Cells")
            page.wait_for_function(
                "() => document.querySelectorAll('.jp-OutputArea-output').length === 0"
            )
            _menu(page, "Run", "Run All Cells")

            # every code cell gets an execution count; "[*]" while running, "[ ]" before
            started = time.monotonic()
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
            while True:
                _accept_dialogs(page)  # e.g. a kernel that took long to start the first time
                texts = [t.strip() for t in prompts.all_inner_texts()]
                if texts and all(re.fullmatch(r"\[\d+\]:", t) for t in texts):
                    break
                if page.locator(".jp-OutputArea-output[data-mime-type*='error']").count():
                    break  # a cell raised (the rest will not run): reported below
                if time.monotonic() - started > RUN_TIMEOUT_S:
                    page.screenshot(path=str(shot))
                    pytest.fail(f"notebook still running after {RUN_TIMEOUT_S} s: {texts}")
                time.sleep(1)
            run_seconds = time.monotonic() - started

            failed = page.locator(".jp-OutputArea-output[data-mime-type*='error']")
            assert failed.count() == 0, f"a cell raised: {failed.first.inner_text()[:2000]}"

            # the explorer: its search box, the result tiles and the map, rendered as widgets
            search_box = page.locator("input[placeholder^='describe an image']")
            search_box.wait_for(timeout=60_000)
            explorer = page.locator(".jupyter-widgets.widget-vbox", has=search_box).last
            explorer.scroll_into_view_if_needed()
            tiles = explorer.locator(".gcsemb-results > .widget-vbox")
            tiles.first.wait_for(timeout=60_000)  # filled by the cell after the explorer
            assert tiles.count() == 8
            images = explorer.locator("img")
            page.wait_for_function(
                "els => els.every(e => e.complete && e.naturalWidth > 0)",
                arg=images.element_handles(),
                timeout=30_000,
            )
            assert images.count() >= 9  # 8 thumbnails and the UMAP map
            assert explorer.get_by_role("button", name="neighbours").count() == 8
            # the box selection made from Python shows its count and a sample of thumbnails
            assert explorer.locator(".gcsemb-selection img").count() > 0
            assert explorer.get_by_text(re.compile(r"images? in the (box|selection)")).count()

            # the widget is live: a search typed into the page goes through the kernel and back
            status = explorer.locator(".widget-html-content", has_text="Top ")
            search_box.fill("a rocket on the launch pad")
            search_box.press("Enter")
            page.wait_for_function(
                "el => el.textContent.includes('a rocket on the launch pad')",
                arg=status.first.element_handle(),
                timeout=60_000,
            )
            # the new thumbnails came from the bucket and decode as images
            page.wait_for_function(
                "root => { const imgs = [...root.querySelectorAll('.gcsemb-results img')];"
                " return imgs.length === 8 && imgs.every(e => e.complete && e.naturalWidth > 0) }",
                arg=explorer.element_handle(),
                timeout=30_000,
            )
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(shot))
            explorer.screenshot(path=str(ARTIFACTS / "04_explorer_widget.png"))

            body = page.locator("body").inner_text()
            assert "Loading widget" not in body
            assert "Error displaying widget" not in body
            assert "Failed to load model class" not in body
        finally:
            browser.close()

    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not _js_errors(console), f"console errors: {_js_errors(console)}"
    print(f"notebook ran in the browser in {run_seconds:.0f} s; screenshot: {shot}")
