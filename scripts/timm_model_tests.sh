#!/usr/bin/env bash
# Runs timm's own model tests (tests/test_models.py of the installed timm version, taken from
# timm's sdist on PyPI at run time, never copied here) against the mixerlab_* models.
# scripts/timm_contract/conftest.py points its model lists at mixerlab's; its assertions run
# unchanged. Extra arguments go to pytest (e.g. -k default_cfgs, -x, --junitxml=FILE).
# Env: PYTHON (default: python), MIXERLAB_TIMM_MODELS / MIXERLAB_TIMM_HEAVY (see the conftest),
#      MIXERLAB_CACHE (where the sdist is kept, default ~/.cache/mixerlab).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python}
VER=$("$PY" -c "import timm; print(timm.__version__)")
CACHE=${MIXERLAB_CACHE:-$HOME/.cache/mixerlab}/timm-tests-$VER
if [ ! -f "$CACHE/test_models.py" ]; then
  echo "timm_model_tests: fetching timm $VER's sdist from the package index" >&2
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  "$PY" -m pip download -q "timm==$VER" --no-binary :all: --no-deps -d "$TMP" >&2
  SDIST=$(ls "$TMP"/timm-*.tar.gz)
  mkdir -p "$CACHE"
  tar -xzf "$SDIST" -C "$TMP" --wildcards '*/tests/test_models.py'
  mv "$TMP"/timm-*/tests/test_models.py "$CACHE/test_models.py.part"
  mv "$CACHE/test_models.py.part" "$CACHE/test_models.py"
fi
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
cp "$CACHE/test_models.py" "$RUN/test_models.py"
cp "$ROOT/scripts/timm_contract/conftest.py" "$RUN/conftest.py"
printf '[pytest]\naddopts =\nfilterwarnings =\n    ignore::pytest.PytestUnknownMarkWarning\n' > "$RUN/pytest.ini"
cd "$RUN"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q -p no:cacheprovider -rs "$@" test_models.py
