#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy into a cache outside the repo:
#   ~/.cache/coxswain/bin/<key>/{etcd,kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,kwok,helm}
# <key> hashes dev/versions.env and every dev/tools/*/go.{mod,sum}, so a version bump builds anew
# and an unchanged tree builds nothing. Prints the binary directory on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
source "$here/versions.env"
cache=${COXSWAIN_CACHE:-$HOME/.cache/coxswain}
key=$(cat "$here/versions.env" "$here"/tools/*/go.mod "$here"/tools/*/go.sum | sha256sum | cut -c1-12)
bin="$cache/bin/$KUBE_VERSION-$key"
export GOCACHE=${GOCACHE:-$cache/go-build} GOMODCACHE=${GOMODCACHE:-$cache/go-mod} GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$bin"
log() { echo "[build-tools] $*" >&2; }
# Two builds at once (two checkouts, two test sessions) would compile the same packages twice
# on a 2-core machine: the second waits for the first, then finds its binaries built.
exec 9>"$cache/bin/.build.lock"
flock -n 9 || { log "another build of the cluster binaries is running; waiting for it"; flock 9; }

need_go() { # the `tool` directive of dev/tools/*/go.mod needs Go 1.24 or newer
  local v
  v=$(go env GOVERSION 2>/dev/null) || { log "Go is not installed: install Go >= 1.24 (https://go.dev/dl or apt-get install golang-go), then run make tools again"; exit 1; }
  v=${v#go}
  if [ "${v%%.*}" -lt 1 ] || { [ "${v%%.*}" -eq 1 ] && [ "$(echo "$v" | cut -d. -f2)" -lt 24 ]; }; then
    log "Go $v is too old: dev/tools/*/go.mod need Go >= 1.24 (or export GOTOOLCHAIN=go1.24.0 to let go fetch it)"
    exit 1
  fi
}

build() { # build <module dir> <ldflags> <binary name>=<package>...
  local dir=$1 ldflags=$2; shift 2
  local pkgs=() names=() spec
  for spec in "$@"; do
    [ -x "$bin/${spec%%=*}" ] && continue
    names+=("${spec%%=*}"); pkgs+=("${spec#*=}")
  done
  [ ${#pkgs[@]} -eq 0 ] && return 0
  need_go
  log "building ${names[*]} (first time on this machine: minutes; cached in $bin)"
  local start=$SECONDS tmp
  tmp=$(mktemp -d "$bin/.build.XXXX")
  (cd "$here/tools/$dir" && go build -trimpath -tags selinux,notest -ldflags "-s -w $ldflags" -o "$tmp/" "${pkgs[@]}")
  for spec in "$@"; do
    local name=${spec%%=*} built
    built="$tmp/$(basename "${spec#*=}")"
    [[ $built =~ /v[0-9]+$ ]] && built=$(dirname "$built")/$(basename "$(dirname "${spec#*=}")")  # go names .../server/v3 "server"
    [ -f "$built" ] && mv "$built" "$bin/$name"   # rename last: a half-built binary never lands
  done
  rm -rf "$tmp"
  log "built ${names[*]} in $((SECONDS - start)) s"
}

kv=${KUBE_VERSION#v}; kmajor=${kv%%.*}; kminor=${kv#*.}; kminor=${kminor%%.*}
kube_ld=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$kmajor -X $p.gitMinor=$kminor -X $p.gitTreeState=clean"
done

build etcd "" etcd=go.etcd.io/etcd/server/v3
build kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" kwok=sigs.k8s.io/kwok/cmd/kwok
build helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm
build kube "$kube_ld" \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kubectl=k8s.io/kubernetes/cmd/kubectl
echo "$bin"
