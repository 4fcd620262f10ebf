#!/usr/bin/env bash
# An image for trying the runtimes without a registry: Debian's busybox-static and its applets, whose command
# (replaceable, as any image's) sleeps forever, so it also stands in for a pod sandbox's pause image.
# Built by Podman in a throwaway store (the machine's images stay as they were) and saved as a docker archive:
#   bash scripts/busybox-image.sh NAME ARCHIVE        e.g. local/busybox /tmp/busybox.tar
# then `podman load -i ARCHIVE`, or `ctr -n k8s.io images import ARCHIVE` for containerd.
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,7p' "$0" >&2; exit 2; }
name="$1"; archive="$(realpath -m "$2")"
for p in podman busybox-static; do
    dpkg -s "$p" >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin"
cp /bin/busybox "$work/rootfs/bin/"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$work/rootfs/bin/$applet"
done
# Its own tmp dir too: else Podman keeps its state (alive, events) in /run/libpod.
podman=(podman --root "$work/storage" --runroot "$work/run" --tmpdir "$work/tmp" --storage-driver vfs)
tar -C "$work/rootfs" -c . | "${podman[@]}" import --quiet --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sleep", "2147483647"]' - "$name" >/dev/null
rm -f "$archive"
"${podman[@]}" save --quiet --format docker-archive -o "$archive" "$name"
"${podman[@]}" rmi --all --force >/dev/null
echo "$archive: $name"
