#!/usr/bin/env bash
# Install the Debian packages the set-up needs, each one only when it is missing.
#
#   scripts/system_deps.sh PACKAGE[:COMMAND] ...
#
# A PACKAGE:COMMAND pair counts as present when COMMAND is on the PATH (whoever installed
# it: e.g. nodesource's nodejs ships its own npm, and Debian's npm package conflicts with
# it); a bare PACKAGE counts as present when dpkg knows it. `apt-get update` runs once,
# before the first install; each package is installed on its own, so a failure names it.
# `--print` lists what would be installed here (tests/test_setup.py simulates exactly that).
set -euo pipefail

print_only=0
if [[ "${1:-}" == "--print" ]]; then print_only=1; shift; fi

missing=()
for spec in "$@"; do
  pkg="${spec%%:*}"
  cmd=""
  [[ "$spec" == *:* ]] && cmd="${spec#*:}"
  if [[ -n "$cmd" ]]; then
    command -v "$cmd" >/dev/null 2>&1 && continue
  else
    dpkg -s "$pkg" >/dev/null 2>&1 && continue
  fi
  missing+=("$pkg")
done

if [[ $print_only == 1 ]]; then
  printf '%s\n' "${missing[@]+"${missing[@]}"}"
  exit 0
fi
if [[ ${#missing[@]} == 0 ]]; then
  echo "system packages: all present ($*)"
  exit 0
fi

SUDO=""
[[ "$(id -u)" == 0 ]] || SUDO=sudo
echo "system packages to install: ${missing[*]}"
$SUDO apt-get update -qq || {
  echo "error: 'apt-get update' failed; check the machine's Debian package sources, then re-run make" >&2
  exit 1
}
for p in "${missing[@]}"; do
  $SUDO apt-get install -y -qq $p || {
    echo "error: 'apt-get install $p' failed. See why with: apt-get install -s $p" >&2
    echo "       (a conflict with a package installed outside Debian, e.g. nodesource's nodejs for npm," >&2
    echo "        means the tool is already there: put it on the PATH and re-run make)" >&2
    exit 1
  }
done
