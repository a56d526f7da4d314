#!/usr/bin/env bash
# Sets up fdnix on a fresh Debian 12 machine, as root: system packages, a virtualenv in .venv
# with the pinned dependencies (requirements.lock), and the project itself.
#   scripts/setup.sh         what running the pipeline and its tests need
#   scripts/setup.sh --dev   also Chromium and PostgreSQL, for the UI and deployment tests
# One lock file pins everything (pipeline and test tools), so CI installs exactly what ran here.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=false
[ "${1:-}" = "--dev" ] && dev=true

apt_packages=(nix-bin zstd python3 python3-venv python3-pip git ca-certificates)
$dev && apt_packages+=(chromium postgresql)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# torch first and by exact version: this CPU build is what the embedding model runs on, and
# any other version or range makes pip fetch a multi-gigabyte CUDA build.
"${pip[@]}" "torch==2.13.0"
grep -v '^torch==' requirements.lock > .venv/requirements-no-torch.txt
"${pip[@]}" -r .venv/requirements-no-torch.txt
"${pip[@]}" --no-deps -e .
echo "fdnix is set up in .venv"
