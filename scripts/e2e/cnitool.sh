#!/usr/bin/env bash
# Build Debian 12's cnitool (libcni 1.1.2) from its source package, offline in GOPATH mode against Debian's
# Go packages, into target/e2e/bin/cnitool. Debian ships no cnitool binary. Does nothing once it is built.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$PWD/target/e2e/bin/cnitool"
[ -x "$out" ] && exit 0

missing=()
for p in golang-go golang-github-appc-cni-dev dpkg-dev; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# `apt-get source` needs a deb-src entry: ours goes in a file of its own, on the machine's mirror.
src_list=/etc/apt/sources.list.d/cni-chain-e2e-src.sources
update=0
if [ ! -f "$src_list" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
        "${mirror:-http://deb.debian.org/debian}" /usr/share/keyrings/debian-archive-keyring.gpg >"$src_list"
    update=1
fi
if [ "$update" = 1 ] || [ ${#missing[@]} -gt 0 ]; then apt-get update -qq; fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get source -qq --download-only golang-github-appc-cni 2>/dev/null && dpkg-source -x ./*.dsc src 2>/dev/null) >/dev/null
mkdir -p "$work/gopath/src/cnitool" "$(dirname "$out")"
cp "$work/src/cnitool/cnitool.go" "$work/gopath/src/cnitool/"
(cd "$work/gopath/src/cnitool" &&
    GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOPROXY=off GOCACHE="$work/cache" go build -o "$out" .)
echo "built $out"
