# Sourced by the scripts that need Python tools from PyPI (scripts/schemathesis,
# tests/deploy_check.sh): `make_venv DIR PACKAGE==VERSION...` makes a venv at DIR and
# installs the packages into it, on any machine this project's CI runs on.
#
# Why not a bare `python3 -m venv DIR`: when its ensurepip step fails, venv hides
# ensurepip's own message ("returned non-zero exit status 1" is all CI printed once),
# and Debian's python3 has no ensurepip until python3-venv is installed. So the venv
# is made without pip, ensurepip runs with its output shown, and when it still fails
# pip is installed into the venv by the host's own pip (`pip --python`, pip >= 22.3).

# Installs Debian packages as root or through sudo.
venv_apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

make_venv() {
  local dir="$1"
  shift
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "venv: installing python3-venv and python3-pip (Debian)"
    venv_apt_install python3-venv python3-pip
  fi
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  python3 -m venv --without-pip "$dir"
  if ! "$dir/bin/python" -m ensurepip --upgrade --default-pip >"$dir.ensurepip.log" 2>&1; then
    echo "venv: ensurepip failed in $dir; its output:"
    sed 's/^/  /' "$dir.ensurepip.log"
    if ! python3 -m pip --version >/dev/null 2>&1; then
      echo "venv: the host python3 has no pip either; installing python3-pip (Debian)"
      venv_apt_install python3-pip
    fi
    echo "venv: installing pip into $dir with the host's pip"
    python3 -m pip --python "$dir/bin/python" install -q --disable-pip-version-check pip
  fi
  rm -f "$dir.ensurepip.log"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
}
