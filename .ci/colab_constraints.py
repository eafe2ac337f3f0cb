#!/usr/bin/env python3
"""Colab's package set as pip constraints, and the checks of `make test-colab`.

Subcommands (stdlib only, any Python >= 3.10):

``generate FREEZE [-o constraints/colab.txt]``
    Turn Colab's ``pip freeze`` into a constraints file that installs on Colab's Python (3.13)
    beside Colab's torch release from PyPI. ``--check`` compares with the committed file instead
    of writing it (``make colab-constraints`` regenerates it).
``preinstalled REPORT``
    From ``pip install --dry-run --report`` of the project under the constraints, print the
    ``name==version`` of every package Colab already has: what a Colab kernel holds before the
    user's ``pip install``.
``check-install LOG``
    Fail if pip's "Successfully installed" line in LOG (a plain ``pip install`` run on top of
    Colab's packages) replaced any of Colab's packages; print the line.
``check-freeze``
    Fail if ``pip freeze`` (read from stdin) disagrees with any pin of the constraints file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints" / "colab.txt"

# Colab's torch comes from PyPI (`make test-colab` installs COLAB_TORCH, Colab's release): its
# CUDA-specific builds (`+cu128`) and CUDA libraries are left out, every other pin is kept.
HEADER = """\
# Colab's GPU runtime (August 2026) as pip constraints, for `make test-colab` (Python 3.13).
#
# Derived from ../shared/ref/colab-gpu-pip-freeze-2026-08.txt by .ci/colab_constraints.py
# (regenerate: make colab-constraints). Every `name==version` line of the freeze is kept except:
#   - direct references (`name @ https://...`, `@ file://`, `@ git+`): not on PyPI;
#   - local versions (`+cu128`: torch, torchvision, torchaudio, torchcodec): PyTorch's own
#     index; `make test-colab` installs the same releases from PyPI;
#   - CUDA libraries (nvidia-*, cuda-*, *-cu12, *cuda12*, *-cuda): they come with torch.
# Colab's pip, setuptools, wheel and triton are pinned like everything else.
"""


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_cuda(name: str) -> bool:
    return (
        name.startswith(("nvidia-", "cuda-"))
        or "cuda" in name
        or re.search(r"-cu1\d+$", name) is not None
    )


def generate(freeze: str) -> str:
    """The constraints file's text for a ``pip freeze`` listing."""
    kept: list[str] = []
    for raw in freeze.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if " @ " in line or "==" not in line:
            continue  # a direct reference: not on PyPI
        name, version = (part.strip() for part in line.split("==", 1))
        key = canonical(name)
        if "+" in version or _is_cuda(key):
            continue
        kept.append(f"{name}=={version}")
    return HEADER + "\n".join(sorted(kept, key=lambda s: canonical(s.split("==")[0]))) + "\n"


def pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    """``{canonical name: version}`` of a constraints or freeze file."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line and " @ " not in line:
            name, version = line.split("==", 1)
            out[canonical(name)] = version.strip()
    return out


def preinstalled(report_path: Path) -> list[str]:
    """Colab's packages among those a dry-run report would install."""
    colab = pins()
    report = json.loads(report_path.read_text())
    found = []
    for item in report["install"]:
        meta = item["metadata"]
        key = canonical(meta["name"])
        if key in colab:
            if colab[key] != meta["version"]:
                raise SystemExit(f"{key}: the report has {meta['version']}, Colab {colab[key]}")
            found.append(f"{meta['name']}=={meta['version']}")
    return sorted(found, key=str.lower)


def _installed_line(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith("Successfully installed")]
    return lines[-1] if lines else "Successfully installed (nothing)"


def check_install(log_path: Path) -> int:
    """Fail when pip's "Successfully installed" line replaced one of Colab's packages."""
    line = _installed_line(log_path.read_text())
    print(line)
    colab = pins()
    changed = []
    for token in line.removeprefix("Successfully installed").split():
        name, _, version = token.rpartition("-")
        key = canonical(name)
        if key in colab:
            changed.append(f"{key} {colab[key]} -> {version}")
    if changed:
        print("pip replaced Colab's packages: " + ", ".join(changed), file=sys.stderr)
        return 1
    print("None of Colab's packages changed.")
    return 0


def check_freeze(freeze: str) -> int:
    """Fail when an installed package differs from its Colab pin."""
    colab = pins()
    installed, differ = 0, []
    for raw in freeze.splitlines():
        line = raw.strip()
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        key = canonical(name)
        if key in colab:
            installed += 1
            if colab[key] != version:
                differ.append(f"{key}=={version} (Colab: {colab[key]})")
    if differ:
        print("Installed versions that differ from Colab's: " + ", ".join(differ), file=sys.stderr)
        return 1
    print(f"{installed} installed packages are pinned by Colab's set: all at Colab's version.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("freeze", type=Path)
    gen.add_argument("-o", "--output", type=Path, default=CONSTRAINTS)
    gen.add_argument("--check", action="store_true", help="compare, do not write")
    pre = sub.add_parser("preinstalled")
    pre.add_argument("report", type=Path)
    inst = sub.add_parser("check-install")
    inst.add_argument("log", type=Path)
    sub.add_parser("check-freeze")
    args = parser.parse_args(argv)

    if args.cmd == "generate":
        text = generate(args.freeze.read_text())
        if args.check:
            if args.output.read_text() != text:
                print(f"{args.output} is out of date: make colab-constraints", file=sys.stderr)
                return 1
            print(f"{args.output} is up to date with {args.freeze.name}.")
            return 0
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output} ({len(pins(args.output))} pins)")
        return 0
    if args.cmd == "preinstalled":
        print("\n".join(preinstalled(args.report)))
        return 0
    if args.cmd == "check-install":
        return check_install(args.log)
    return check_freeze(sys.stdin.read())


if __name__ == "__main__":
    sys.exit(main())
