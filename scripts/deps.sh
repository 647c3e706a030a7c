#!/usr/bin/env bash
# deps.sh check|install build|test|container -- make sure the Debian packages lmserve needs are present.
#
# "check" only reports; "install" installs what is missing with apt-get when run
# as root, and otherwise prints the exact sudo line and fails.
set -euo pipefail
mode=${1:-check}
what=${2:-build}

build_pkgs=(gcc make pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev)
test_pkgs=("${build_pkgs[@]}" libcriterion-dev python3 python3-tqdm python3-matplotlib python3-numpy python3-jsonschema
           nginx-light chromium valgrind clang curl nodejs npm bible-kjv-text bible-kjv
           python3-venv python3-setuptools python3-pip python3-jinja2)
# make test-container: podman with runc (crun fails on these VMs' hybrid cgroups), the base
# image made by debootstrap, compose through podman-compose with container DNS (dnsname).
container_pkgs=(podman runc uidmap fuse-overlayfs slirp4netns debootstrap containernetworking-plugins
           catatonit podman-compose golang-github-containernetworking-plugin-dnsname python3 curl)

case $what in
  build) pkgs=("${build_pkgs[@]}") ;;
  test)  pkgs=("${test_pkgs[@]}") ;;
  container) pkgs=("${container_pkgs[@]}") ;;
  *) echo "deps.sh: unknown set '$what'" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  # node/npm may come from elsewhere than Debian (e.g. NodeSource): accept a working binary.
  case $p in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm)    command -v npm  >/dev/null 2>&1 && continue ;;
  esac
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$mode" = check ]; then
  echo "lmserve: missing packages: ${missing[*]}" >&2
  echo "lmserve: run 'make deps' (or: sudo apt-get install -y ${missing[*]})" >&2
  exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "lmserve: these Debian packages are needed: ${missing[*]}" >&2
  echo "lmserve: install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "lmserve: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
