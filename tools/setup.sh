#!/usr/bin/env bash
# One-command setup: a virtual environment with torch, Detectron2 v0.6 and iaunet_d2.
#
#   bash tools/setup.sh            # creates ./.venv (or $IAUNET_VENV)
#
# Works offline from PyPI alone: Detectron2 comes from the `pb1-detectron2==0.6`
# source distribution (the v0.6 release's Python code), installed without its C++/CUDA
# extension. A Detectron2 already present in the environment (for example one built
# from its GitHub source, see README) is kept. Re-running is fast and changes nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${IAUNET_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=$ROOT/requirements/constraints.txt
START=$(date +%s)

say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY=$VENV/bin/python
PIP=("$PY" -m pip --disable-pip-version-check -q)

say "installing build tools and torch"
"${PIP[@]}" install -c "$CONSTRAINTS" "pip>=23" "setuptools<82" wheel
"${PIP[@]}" install -c "$CONSTRAINTS" torch torchvision

if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('detectron2') is None)"; then
  say "detectron2 already installed: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
else
  say "installing detectron2 0.6 from the pb1-detectron2 source distribution (no compiled ops)"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  # The sdist's setup.py imports torch, so it needs the venv's torch (no build isolation).
  "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation -d "$WORK" "pb1-detectron2==0.6"
  tar -xzf "$WORK"/pb1-detectron2-0.6.tar.gz -C "$WORK"
  SRC=$WORK/pb1-detectron2-0.6
  # Skip the C++/CUDA extension: the models here use none of its ops, and building it
  # needs a matching CUDA toolchain. iaunet_d2.compat handles the missing module.
  "$PY" - "$SRC/setup.py" <<'PYEOF'
import sys
path = sys.argv[1]
text = open(path).read()
patched = text.replace("ext_modules=get_extensions(),", "ext_modules=[],")
if patched == text:
    sys.exit(f"{path}: could not disable the C++ extension (setup.py layout changed)")
open(path, "w").write(patched)
PYEOF
  "${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation "$SRC"
fi

say "installing iaunet_d2 (editable) and its dependencies"
"${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[test,realcells]"
# The tests use the real DSB2018 nuclei image that stardist ships (its data only: the
# package itself would pull in TensorFlow, so its dependencies are not installed).
"${PIP[@]}" install -c "$CONSTRAINTS" --no-deps "stardist==0.9.2"

"$PY" -c "import iaunet_d2, detectron2, torch; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__, '| compiled ops:', iaunet_d2.compat.HAS_COMPILED_OPS)"
say "done in $(( $(date +%s) - START )) s; activate with: source $VENV/bin/activate"
