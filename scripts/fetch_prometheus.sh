#!/usr/bin/env bash
# Puts a real Prometheus server (and promtool) under .tools/prometheus/usr/bin for the PromQL
# integration tests. Idempotent: does nothing when the binary is already there.
#
#   scripts/fetch_prometheus.sh            # then: .tools/prometheus/usr/bin/prometheus --version
#
# It uses the distribution's package (apt-get download + dpkg-deb -x) instead of installing it, so
# nothing system-wide changes and no service is started. The binary is static apart from libc.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/prometheus"
bin="$dest/usr/bin/prometheus"

if [[ -x "$bin" ]]; then
    echo "prometheus already at $bin"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# apt drops privileges to _apt for downloads; let it write here (else it warns and falls back to root).
chown _apt "$tmp" 2>/dev/null || true

cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>&1; then
    echo "apt-get download prometheus failed; refreshing package lists once (apt-get update)" >&2
    apt-get update >/dev/null || { echo "apt-get update failed (needs root and network)" >&2; exit 1; }
    apt-get download prometheus
fi

debs=(prometheus_*.deb)
if [[ ! -f "${debs[0]}" ]]; then
    echo "apt-get download prometheus produced no .deb in $tmp" >&2
    exit 1
fi
mkdir -p "$dest"
dpkg-deb -x "${debs[0]}" "$dest"

if [[ ! -x "$bin" ]]; then
    echo "unpacked ${debs[0]} but $bin is missing" >&2
    exit 1
fi
echo "prometheus: $bin ($("$bin" --version 2>&1 | head -n1))"
echo "promtool:   $dest/usr/bin/promtool"
