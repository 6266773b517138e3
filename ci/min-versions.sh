#!/usr/bin/env bash
# The fast test subset on the oldest supported versions (ci/min-versions.txt).
#
# A fresh venv gets gradscope with its dependencies constrained to the declared floors.
# The sample models are rebuilt there first, with that Keras, because a .keras file saved
# by a newer Keras does not load in an older one; GRADSCOPE_SAMPLE_DIR points the tests
# at them.  Runs from the repository root, needs no standard input; set KEEP_MIN_ENV=1 to
# keep the venv (its path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/gradscope-min-versions.XXXXXX")"
if [[ "${KEEP_MIN_ENV:-0}" != 1 ]]; then trap 'rm -rf "$work"' EXIT; fi
echo "min-versions: venv in $work"
python -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check \
    -c ci/min-versions.txt . pytest
# Every pinned package must be installed at exactly its pin.
"$py" - <<'PY'
import importlib.metadata as md
import sys

pins = dict(
    line.split("==")
    for line in open("ci/min-versions.txt").read().splitlines()
    if line.strip() and not line.startswith("#")
)
wrong = {name: md.version(name) for name, pin in pins.items() if md.version(name) != pin}
print("min-versions:", ", ".join(f"{name} {md.version(name)}" for name in pins))
sys.exit(f"min-versions: not at the pinned versions: {wrong}" if wrong else 0)
PY
echo "min-versions: installed in $((SECONDS - start)) s"
"$py" sample_models/build.py --out "$work/samples"
GRADSCOPE_SAMPLE_DIR="$work/samples" "$py" -m pytest -p no:cacheprovider \
    tests/test_reference.py tests/test_min_versions_smoke.py tests/test_keras_private.py \
    tests/test_curvature_matrices.py tests/test_instruments.py tests/test_attribute.py
echo "min-versions: passed in $((SECONDS - start)) s"
