#!/usr/bin/env bash
# Build Debian 12's cnitool (libcni 1.1.2) from its source package, offline in GOPATH mode against Debian's
# Go packages, into target/e2e/bin/cnitool. Debian ships no cnitool binary. Does nothing once it is built.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="$PWD/target/e2e/bin/cnitool"
[ -x "$out" ] && exit 0

missing=()
for p in golang-go golang-github-appc-cni-dev dpkg-dev; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# An older version of this script left this deb-src entry behind.
rm -f /etc/apt/sources.list.d/cni-chain-e2e-src.sources

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# `apt-get source` needs a deb-src entry: ours, its index and the download live in $work only, so the machine's
# apt sources and lists stay as they were.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror:-http://deb.debian.org/debian} bookworm main" \
    >"$work/sources.list"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
apt_src=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
apt-get "${apt_src[@]}" update -qq
(cd "$work" && apt-get "${apt_src[@]}" source -qq --download-only golang-github-appc-cni 2>/dev/null &&
    dpkg-source -x ./*.dsc src 2>/dev/null) >/dev/null
mkdir -p "$work/gopath/src/cnitool" "$(dirname "$out")"
cp "$work/src/cnitool/cnitool.go" "$work/gopath/src/cnitool/"
(cd "$work/gopath/src/cnitool" &&
    GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOPROXY=off GOCACHE="$work/cache" go build -o "$out" .)
echo "built $out"
