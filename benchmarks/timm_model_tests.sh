#!/usr/bin/env bash
# Run timm's own tests/test_models.py (from the sdist of the installed timm version) on gaheads' models.
#
#   benchmarks/timm_model_tests.sh [WORKDIR] [-- extra pytest args, e.g. -k "ga2_cct_7_3x1_32"]
#
# Set-up (needs the package index once): downloads timm's source distribution into WORKDIR
# (default /tmp/timm_model_tests). The test file's assertions are unchanged; three lists are
# extended so timm's selection logic knows gaheads' models: token-output models join
# NON_STD_FILTERS (timm's rules for ViT-like models), gaheads' modules join FEAT_INTER_FILTERS
# (models with forward_intermediates), and `import gaheads` registers the models. Results: docs/timm.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${1:-/tmp/timm_model_tests}
shift || true
[ "${1:-}" = "--" ] && shift
VER=$("$PY" -c "import timm; print(timm.__version__)")
mkdir -p "$WORK"
if [ ! -f "$WORK/timm-$VER/tests/test_models.py" ]; then
  "$PY" -m pip download --no-deps --no-binary :all: "timm==$VER" -d "$WORK" >/dev/null
  tar xzf "$WORK/timm-$VER.tar.gz" -C "$WORK"
fi
T="$WORK/gaheads_tests"
mkdir -p "$T"
"$PY" - "$WORK/timm-$VER/tests/test_models.py" "$T/test_models.py" <<'PYEOF'
import sys
src, dst = sys.argv[1:]
s = open(src).read()
s = s.replace("import timm\n", "import timm\nimport gaheads  # registers gaheads' models\n", 1)
s = s.replace("NON_STD_FILTERS = [\n", "NON_STD_FILTERS = [\n    '*cct_*', 'ga_vit_*',\n", 1)
s = s.replace("FEAT_INTER_FILTERS = [\n", "FEAT_INTER_FILTERS = [\n    'cct', 'cswin', 'ga_convnext', 'ga_timm',\n", 1)
assert s.count("gaheads") == 2 and "'*cct_*'" in s and "'ga_convnext'" in s
open(dst, "w").write(s)
PYEOF
cd "$T"
exec "$PY" -m pytest -p no:cacheprovider -W ignore::pytest.PytestUnknownMarkWarning -q -rfEs "$@" test_models.py
