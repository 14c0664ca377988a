#!/usr/bin/env bash
# Sets up everything healthmon needs on a fresh Debian machine: Java 17+ for
# Spark (from Debian's packages when missing), a virtualenv in .venv and the
# pinned Python packages.  Idempotent; `make` runs it when pyproject.toml or
# this file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "cannot install $* (no apt-get): install it yourself and run make again"; exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${APT_UPDATED:-}" ]; then $sudo apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

# Java: Spark 4 needs 17 or newer.
if ! command -v java >/dev/null 2>&1 || [ "$(java_major)" -lt 17 ]; then
  say "Spark needs Java 17+; none found, installing Debian's openjdk-17-jre-headless"
  apt_install openjdk-17-jre-headless
fi
say "java $(java_major) at $(command -v java)"

# Python 3.11+ with venv.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  say "healthmon needs Python 3.11+, $PYTHON is $("$PYTHON" --version 2>&1)"; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv >/dev/null 2>&1; then
    say "python venv module missing, installing Debian's python3-venv"
    apt_install python3-venv
    rm -rf .venv
    "$PYTHON" -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
say "virtualenv ready: .venv ($(.venv/bin/python --version))"
