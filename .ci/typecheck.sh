#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping, so lay the one import package out as
# it is installed (dssync/ with its sub-packages inside) in a scratch tree of symlinks.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/dssync"
for f in "$top"/dssync/*.py; do ln -s "$f" "$tree/dssync/"; done
# every top-level folder pyproject.toml maps to a dssync.<sub> package
subs=$("${PYTHON:-python}" -c 'import sys, tomllib; d = tomllib.load(open(sys.argv[1], "rb"))["tool"]["setuptools"]["package-dir"]; print(" ".join(k.split(".")[1] for k in d if k.count(".") == 1))' "$top/pyproject.toml")
for sub in $subs; do ln -s "$top/$sub" "$tree/dssync/$sub"; done
cd "$tree"
"${PYTHON:-python}" -m mypy --config-file "$top/pyproject.toml" -p dssync
