"""Packaging promises: conda and pip agree, `import gcsemb` stays light, functions stay short."""

from __future__ import annotations

import ast
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
        "duckdb",
    }
    assert chosen <= declared


def _extra(name: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if name == "" else project["optional-dependencies"][name]
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_notebook_extra_fits_a_hosted_kernel():
    """`gcsemb[notebook]` goes into a hosted kernel (Colab, Workbench): no server, widgets 7."""
    notebook = _extra("notebook")
    assert "jupyterlab" not in notebook and "notebook" not in notebook
    assert notebook["ipywidgets"] == "ipywidgets>=7.7"  # Colab ships 7.7.1
    assert "duckdb" in notebook  # notebook 03 queries the dataset with it
    lab = _extra("lab")
    assert lab["jupyterlab"].startswith("jupyterlab>=4")
    env = (ROOT / "environment.yml").read_text()
    assert "jupyterlab" not in yaml.safe_load(env)["dependencies"][-1]["pip"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])


def _floor(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    assert match, f"{requirement} has no floor"
    return _version(match.group(1))


def test_floors_have_no_known_flaws():
    """Issue 14: torch.load unpickling (<2.6), libwebp (Pillow<10.3), pyarrow 14.0.0."""
    deps = _extra("")
    assert _floor(deps["torch"]) >= (2, 6)
    assert _floor(deps["pillow"]) >= (10, 3)
    assert _floor(deps["pyarrow"]) >= (14, 0, 1)
    assert _floor(deps["open-clip-torch"]) >= (2, 27)  # load_state_dict(weights_only=True)


def test_colab_package_set_satisfies_the_floors():
    """Every package Colab pins (constraints/colab.txt) meets the floor declared for it."""
    pins = {}
    for line in (ROOT / "constraints" / "colab.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_name(name)] = version
    assert {"ipywidgets", "pandas", "pyarrow", "gcsfs", "numpy", "duckdb"} <= set(pins)
    colab_torch = {"torch": "2.11.0", "torchvision": "0.26.0"}  # not in the constraints
    checked = 0
    for extra in ("", "notebook", "demo"):
        for name, req in _extra(extra).items():
            version = pins.get(name) or colab_torch.get(name)
            if version is None:
                continue  # Colab lacks it: pip installs it
            assert _version(version) >= _floor(req), f"Colab has {name} {version}; we need {req}"
            checked += 1
    assert checked >= 12


def test_import_is_light():
    code = (
        "import sys, gcsemb; heavy = {'torch', 'gcsfs', 'umap', 'open_clip', 'pandas', "
        "'matplotlib', 'importlib.metadata'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_exports_resolve():
    import gcsemb

    for name in gcsemb.__all__:
        assert getattr(gcsemb, name) is not None


def test_the_version_is_the_one_pyproject_declares():
    import gcsemb

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert gcsemb.__version__ == version and "__version__" in dir(gcsemb)


SCHEME_BRANCHES = re.compile(
    r"\bis_gcs\(|(?<!storage)\.gcs\b|\bprotocols\(|[\"'](?:gs|gcs|file)[\"'] in\b"
    r"|in \([\"'](?:gs|gcs|file)[\"']|startswith\([\"'](?:gs|gcs|file)://|== [\"'](?:gs|gcs)[\"']"
)
BACKENDS = {"gcsemb/storage/gcs.py", "gcsemb/storage/files.py"}


def test_only_the_storage_backends_branch_on_the_url_scheme():
    """A new backend (S3, Azure, a local object store) is one file: no other module asks
    which storage a URL names (tests/objstore.py runs the lease and the writer that way)."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "gcsemb").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in BACKENDS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SCHEME_BRANCHES.search(line)
    ]
    assert not found, "\n".join(found)


FUNCTION_LINES = 60  # of code, the docstring not counted


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's end."""
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if len(body) == 1:
            return 0
        first = body[1]
    start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))])
    return node.end_lineno - start + 1


def _long_functions(source: str) -> list[tuple[int, str, int]]:
    """(line, name, lines of code) of each function over FUNCTION_LINES without a '# long:'."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        n = _code_lines(node)
        own = lines[node.lineno - 1 : node.end_lineno]
        if n > FUNCTION_LINES and not any("# long:" in line for line in own):
            found.append((node.lineno, node.name, n))
    return found


def test_the_length_check_counts_code_not_docstrings():
    body = "".join(f"    x{i} = {i}\n" for i in range(FUNCTION_LINES))
    doc = '    """Doc.\n\n' + "    more\n" * 30 + '    """\n'
    assert _long_functions(f"def short():\n{doc}{body}") == []
    assert _long_functions(f"def long():\n{doc}{body}    return 0\n") == [(1, "long", 61)]
    reason = "    # long: one table, read top to bottom\n"
    assert _long_functions(f"def why():\n{doc}{reason}{body}    return 0\n") == []


def test_no_function_is_too_long():
    too_long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({n} lines)"
        for path in sorted((ROOT / "gcsemb").rglob("*.py"))
        for line, name, n in _long_functions(path.read_text())
    ]
    assert not too_long, (
        f"over {FUNCTION_LINES} lines of code (split them, or say why in a '# long: ...' comment "
        "right after the docstring):\n" + "\n".join(too_long)
    )
