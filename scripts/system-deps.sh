#!/usr/bin/env bash
# System packages the project uses: a C compiler for test targets and the addon, and
# liblz4 for the page codec, redis-server (a real service for tests and benchmarks), openssl
# (test certificates). Installed only when missing, only as root with apt-get.
set -euo pipefail
pkgs=(build-essential liblz4-dev redis-server openssl)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[system-deps] please install: ${missing[*]}" >&2
  exit 1
fi
echo "[system-deps] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
