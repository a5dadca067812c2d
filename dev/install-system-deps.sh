#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: Prometheus (+promtool) scrapes real metrics,
# wrk drives load from a separate process; a real node (`coxswain dev cluster up --real-nodes N`)
# runs Debian's containerd + runc with the standard CNI plugins, kube-proxy needs iptables and
# conntrack, and its test images start from busybox-static. Installs only what is missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v wrk >/dev/null || need+=(wrk)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
[ -x /bin/busybox ] || need+=(busybox-static)
[ ${#need[@]} -eq 0 ] && exit 0
echo "[deps] installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's package starts a system Prometheus on :9090; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
pkill -x prometheus 2>/dev/null || true
