#!/usr/bin/env bash
# Idempotent setup: Debian's Fashion-MNIST package, a .venv with torch 2.13.0 (CPU) and baim.
# Runs as root on Debian; without root, install dataset-fashion-mnist yourself (or pass
# --data-dir to a folder holding the four IDX files) and run this script again.
# `--test` also installs Debian's chromium, which the web page's browser test drives.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package chromium (for the web page's browser test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: the browser test needs Debian's chromium. As root run: apt-get install chromium" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3.11}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

if [ ! -f "$FMNIST" ] && [ -z "${BAIM_FMNIST_DIR:-}" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing. As root run: apt-get install dataset-fashion-mnist" >&2
    echo "       or set BAIM_FMNIST_DIR to a folder holding the four *-ubyte.gz IDX files." >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  command -v "$PY" >/dev/null || { echo "setup: $PY not found; baim needs Python 3.11 (set PYTHON=...)" >&2; exit 1; }
  "$PY" -m venv .venv
fi

# Reinstall only when the project's dependency list changed since the last setup.
stamp=.venv/.baim-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, pinned: the CPU build; a bare "torch" would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[test,lite0,flower]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv)"
