"""Packaging promises: conda and pip agree, and `import gcsemb` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = {*project["dependencies"], *extras["notebook"], *extras["demo"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # same packages and the same version bounds, so a Workbench kernel matches a pip install
    assert {r.replace(" ", "") for r in pip_section} == {r.replace(" ", "") for r in wanted}
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


def test_users_chosen_dependencies_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    chosen = {
        "jupyterlab",
        "ipywidgets",
        "torch",
        "torchdata",
        "gcsfs",
        "pillow",
        "open-clip-torch",
        "pandas",
        "pyarrow",
        "matplotlib",
        "umap-learn",
    }
    assert chosen <= declared


def test_import_is_light():
    code = (
        "import sys, gcsemb; heavy = {'torch', 'gcsfs', 'umap', 'open_clip', 'pandas', "
        "'matplotlib'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_exports_resolve():
    import gcsemb

    for name in gcsemb.__all__:
        assert getattr(gcsemb, name) is not None
