#!/usr/bin/env bash
# Sets up everything healthmon needs on a fresh Debian machine (see also the npm and
# Debian test tools at the end): Java 17+ for
# Spark (from Debian's packages when missing), the Apache Hadoop jars of the
# local HDFS in .hadoop/lib (fetched by Maven as hadoop/pom.xml says; Maven from
# Debian's packages when missing), a virtualenv in .venv and the pinned Python
# packages.  Idempotent; `make` runs it when pyproject.toml, hadoop/pom.xml or
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

# The local HDFS (`healthmon hdfs up`): Hadoop's NameNode and DataNode jars from
# Maven Central, as hadoop/pom.xml lists them.  Fetched again only when the pom
# changed (its hash is kept beside the jars); into a temporary directory first,
# so an interrupted fetch never leaves a half-filled .hadoop/lib behind.
HADOOP_LIB=.hadoop/lib
pom_hash=$(sha256sum hadoop/pom.xml | cut -d' ' -f1)
if [ "$(cat "$HADOOP_LIB/.pom.sha256" 2>/dev/null)" != "$pom_hash" ]; then
  if ! command -v mvn >/dev/null 2>&1; then
    say "the Hadoop jars are fetched with Maven; none found, installing Debian's maven"
    apt_install maven
  fi
  say "fetching the Hadoop jars of the local HDFS from Maven Central into $HADOOP_LIB (hadoop/pom.xml)"
  rm -rf "$HADOOP_LIB.tmp"
  mkdir -p .hadoop
  if ! mvn -q -B -f hadoop/pom.xml dependency:copy-dependencies -DoutputDirectory="$PWD/$HADOOP_LIB.tmp" \
      >.hadoop/mvn.log 2>&1; then
    tail -n 30 .hadoop/mvn.log
    say "Maven could not fetch the Hadoop jars (full output in .hadoop/mvn.log)"; exit 1
  fi
  echo "$pom_hash" >"$HADOOP_LIB.tmp/.pom.sha256"
  rm -rf "$HADOOP_LIB"
  mv "$HADOOP_LIB.tmp" "$HADOOP_LIB"
fi
say "hadoop jars ready: $HADOOP_LIB ($(ls "$HADOOP_LIB"/*.jar | wc -l) jars, $(du -sh "$HADOOP_LIB" | cut -f1))"

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

# Block latency tracing for `healthmon agent` (optional: without these packages the agent falls back to
# /proc/diskstats, mean latency only, and says why).  libbpf-tools gives `biolatency` (CO-RE: needs only
# the kernel's BTF); python3-bpfcc and the kernel headers let BCC compile its tracepoint program.  Never
# fails the setup: no apt, no root (or password-less sudo), or no such package just means no tracing.
if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  missing=()
  for pkg in libbpf-tools python3-bpfcc "linux-headers-$arch"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then
      say "block latency tracing for the agent: installing Debian's ${missing[*]}"
      ( apt_install "${missing[@]}" ) || say "could not install ${missing[*]}: the agent will use what is available (/proc/diskstats at least)"
    else
      say "block latency tracing for the agent needs ${missing[*]} (run as root to install): the agent will fall back"
    fi
  fi
fi

# Front-end libraries the API serves itself (uPlot for the dashboard, Swagger UI for /docs), from the npm
# registry as package-lock.json pins them; again only when the lock file changed.
if ! command -v npm >/dev/null 2>&1; then
  say "the dashboard's libraries come from npm; none found, installing Debian's npm"
  apt_install npm
fi
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.lock.sha256 2>/dev/null)" != "$lock_hash" ]; then
  say "installing the dashboard's JavaScript libraries (package-lock.json) into node_modules"
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
  echo "$lock_hash" >node_modules/.lock.sha256
fi

# Test and bench tools from Debian: chromium (the dashboard's browser tests, driven by Playwright without its
# own browser download), prometheus/promtool (a real Prometheus scrapes /metrics in the tests) and wrk (the
# query bench's HTTP load generator: C, so the 16 clients leave the 2 cores to the server).
missing=()
for cmd in chromium promtool wrk; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=()
  for cmd in "${missing[@]}"; do case $cmd in promtool) pkgs+=(prometheus) ;; *) pkgs+=("$cmd") ;; esac; done
  say "installing Debian's ${pkgs[*]} (browser and Prometheus tests, query bench)"
  apt_install "${pkgs[@]}"
fi
