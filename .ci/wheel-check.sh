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
for sub in ("log", "producers", "consumers", "schemas", "sync", "monitor", "tools"):
    assert f"dssync.{sub}" in names, f"dssync.{sub} missing from the wheel"
from dssync.schemas import codec
assert len(codec.registry.by_fingerprint) >= 5, "schema files missing from the wheel"
import importlib.util
for top_level in ("tools", "schemas", "producers", "consumers", "log", "sync", "monitor"):
    spec = importlib.util.find_spec(top_level)
    assert spec is None or sys.argv[1] not in str(spec.origin or spec.submodule_search_locations), top_level
print(f"wheel OK: {len(names)} modules import from {os.path.dirname(dssync.__file__)}")
PY
