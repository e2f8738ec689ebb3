#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then lint, type-check and run it.
#   Debian: redis-server, prometheus          npm: azurite (into ./.tools)          PyPI: mlplat[test] (into ./.venv)
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/unit -x`. The tests run in TEST_WORKERS (4)
# processes (pytest-xdist; `-n 0` after them runs in one); tests marked `serial` run alone (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v prometheus >/dev/null 2>&1 || apt_packages+=(prometheus)
if ((${#apt_packages[@]})); then
    step "apt-get install ${apt_packages[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
    step "npm install azurite (Azure Blob emulator) into .tools/"
    npm install --prefix .tools --no-audit --no-fund --loglevel=error azurite@3
fi

if [ ! -x .venv/bin/python ]; then
    step "python3 -m venv .venv"
    python3 -m venv .venv
fi
step "pip install -e .[test]"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

step "ruff"
.venv/bin/ruff check mlplat tests scripts
step "mypy"
.venv/bin/mypy mlplat tests scripts
step "pytest"
.venv/bin/pytest -n "${TEST_WORKERS:-4}" --dist worksteal "$@"
