#!/usr/bin/env bash
# Makes a CRIU >= 4.2 available to the project, without touching system libraries.
#
#  1. If REPLICATE_CRIU or `criu` on PATH is >= 4.2 and `criu check` passes, use it.
#  2. Otherwise build CRIU from Debian's source package into vendor/criu/ (owned by the project).
#
# Debian 12's criu 3.17 fails on recent kernels (vDSO bounds) and 4.1 cannot dump TCP sockets
# here (see shared/FACTS.md), hence the source build. The result is recorded in
# vendor/criu/PATH so the library can find it without searching.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/vendor/criu"
want_major=4 want_minor=2
log() { printf '[provision-criu] %s\n' "$*" >&2; }

version_ok() { # $1 = criu binary
  local v; v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\)\.\([0-9]*\).*/\1 \2/p') || return 1
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt $want_major ] || { [ "$1" -eq $want_major ] && [ "$2" -ge $want_minor ]; }
}
check_ok() { "$1" check >/dev/null 2>&1; }

for cand in "${REPLICATE_CRIU:-}" "$(command -v criu 2>/dev/null || true)"; do
  [ -n "$cand" ] && [ -x "$cand" ] || continue
  if version_ok "$cand" && check_ok "$cand"; then
    log "using $cand ($("$cand" --version | head -1))"
    mkdir -p "$dest"; printf '%s\n' "$cand" > "$dest/PATH"
    exit 0
  fi
  log "ignoring $cand: older than $want_major.$want_minor or 'criu check' fails"
done

# CRIU probes the kernel at every start (~40 ms here) unless it finds its cache, which it
# keeps only on a tmpfs; /run is not one on every machine, /dev/shm nearly always is. A
# restore 40 ms shorter is 40 ms less failover time, so build with a tmpfs RUNDIR.
rundir=/run
[ "$(stat -f -c %T /run 2>/dev/null)" = tmpfs ] || { [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && rundir=/dev/shm; }
build_id="criu-4.2 RUNDIR=$rundir"

if [ -x "$dest/bin/criu" ] && version_ok "$dest/bin/criu" && [ "$(cat "$dest/BUILD" 2>/dev/null)" = "$build_id" ]; then
  log "already built: $dest/bin/criu ($build_id)"
  printf '%s\n' "$dest/bin/criu" > "$dest/PATH"
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  log "no usable CRIU and cannot build one (needs root and apt-get)."
  log "install CRIU >= $want_major.$want_minor yourself and set REPLICATE_CRIU=/path/to/criu"
  exit 1
fi

build_deps=(libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler python3-protobuf
  libnl-3-dev libnl-route-3-dev libnet1-dev libcap-dev libbsd-dev pkg-config libgnutls28-dev
  libnftables-dev uuid-dev libaio-dev xz-utils iproute2 iptables)
missing=()
for p in "${build_deps[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A private apt configuration that adds a deb-src entry for sid, so that the system's own
# sources and state are left alone.
work="$dest/src"
mkdir -p "$work/apt/sources" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
uri=$(grep -hoE '^(URIs:|deb) *\[?[^ ]*' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | grep -oE 'https?://[^ ]*debian/?' | grep -v security | head -1 || true)
[ -n "$uri" ] || { log "no Debian mirror URI found in /etc/apt"; exit 1; }
cat > "$work/apt/sources/criu-src.sources" <<SRC
Types: deb-src
URIs: $uri
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
aptopts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/sources"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o APT::Sandbox::User=root)
log "fetching CRIU source from Debian ($uri, suite sid)"
apt-get "${aptopts[@]}" update -qq >/dev/null 2>&1 || true
# The .debian.tar.xz may 404, making apt exit non-zero: judge by the tarball instead.
(cd "$work" && apt-get "${aptopts[@]}" source --download-only criu >/dev/null 2>&1) || true
tarball=$(ls -1 "$work"/criu_*.orig.tar.* 2>/dev/null | sort -V | tail -1 || true)
[ -n "$tarball" ] || { log "could not download the CRIU source tarball"; exit 1; }
log "building from $(basename "$tarball")"
rm -rf "$work/build"; mkdir -p "$work/build"
tar -xf "$tarball" -C "$work/build" --strip-components=1
make -C "$work/build" -j"$(nproc)" criu RUNDIR="$rundir" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; log "build failed (log: $work/build.log)"; exit 1; }
mkdir -p "$dest/bin"
cp "$work/build/criu/criu" "$dest/bin/criu"
version_ok "$dest/bin/criu" || { log "built CRIU is older than $want_major.$want_minor"; exit 1; }
printf '%s\n' "$dest/bin/criu" > "$dest/PATH"
printf '%s\n' "$build_id" > "$dest/BUILD"
rm -rf "$work/build"
log "built $("$dest/bin/criu" --version | head -1) at $dest/bin/criu"
