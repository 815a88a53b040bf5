#!/usr/bin/env bash
# Build the wheel and import every sub-package from it in a clean venv: a sub-package left
# out of [tool.setuptools] packages would otherwise vanish silently from the wheel.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m build -q --wheel --outdir "$work/dist" "$top" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
python -m pip install -q --no-deps --target "$work/site" "$work"/dist/*.whl
cd "$work"
# PYTHONPATH comes before the editable install of the checkout, so this imports the wheel.
PYTHONPATH="$work/site" python - "$work/site" <<'PY'
import importlib, os, pkgutil, sys
import dssync
assert dssync.__file__.startswith(sys.argv[1]), dssync.__file__
names = [m.name for m in pkgutil.walk_packages(dssync.__path__, "dssync.")]
for name in names:
    importlib.import_module(name)
for sub in ("log", "producers", "consumers", "schemas", "sync", "monitor", "appliance", "tools", "bench"):
    assert f"dssync.{sub}" in names, f"dssync.{sub} missing from the wheel"
from dssync.schemas import codec
assert len(codec.registry.by_fingerprint) >= 5, "schema files missing from the wheel"
import importlib.util
for top_level in ("tools", "schemas", "producers", "consumers", "log", "sync", "monitor", "appliance", "bench"):
    spec = importlib.util.find_spec(top_level)
    assert spec is None or sys.argv[1] not in str(spec.origin or spec.submodule_search_locations), top_level
print(f"wheel OK: {len(names)} modules import from {os.path.dirname(dssync.__file__)}")
PY
# Child processes (serve, mirror, the benchmarks' runs) start the installed program even from
# the checkout root, where a plain 'python -m' would find the checkout's dssync/ folder first.
cd "$top"
PYTHONPATH="$work/site" python -P - "$work/site" <<'PY'
import subprocess, sys
from dssync.process import command
argv = command("--version")
argv[argv.index("-m"):] = ["-c", "import dssync.tools.cli as c; print(c.__file__)"]
where = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
assert where.startswith(sys.argv[1]), f"a child process imported {where}, not the wheel"
subprocess.run(command("--version"), check=True, capture_output=True)
print("wheel OK: child processes started from the checkout root run the wheel")
PY
