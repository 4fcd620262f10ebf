#!/usr/bin/env bash
# The main job, end to end in throwaway namespaces: a "node" netns running the plugins and two pods,
# wired by ptp with linkGroup 8 and addresses from host-local; shows the kernel state and traffic,
# then removes everything (also on failure). The machine's own network is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="demo$$"
node="$tag-node"; pods=("$tag-pod1" "$tag-pod2")
data=$(mktemp -d)
bin="$PWD/target/release"

cleanup() {
    for ns in "${pods[@]}" "$node"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$data"
}
trap cleanup EXIT

config=$(cat <<JSON
{
  "cniVersion": "1.1.0",
  "name": "demo",
  "type": "ptp",
  "mtu": 1400,
  "linkGroup": 8,
  "ipam": {
    "type": "host-local",
    "dataDir": "$data",
    "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
  }
}
JSON
)

# Run one CNI verb of ptp inside the node netns, per the protocol: env + config on stdin.
# ptp delegates addresses to our host-local (first in CNI_PATH).
cni() { # verb container pod-netns
    echo "$config" | ip netns exec "$node" env CNI_COMMAND="$1" CNI_CONTAINERID="$2" \
        CNI_NETNS="${3:+/var/run/netns/$3}" CNI_IFNAME=eth0 CNI_PATH="$bin:/usr/lib/cni" "$bin/ptp"
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ip netns add "$node"
for p in "${pods[@]}"; do ip netns add "$p"; done

step "ADD: ptp + host-local for two pods"
for i in 0 1; do
    echo "pod$((i + 1)) result:"; cni ADD "c$((i + 1))" "${pods[$i]}"
done

step "pod1: its interface and the point-to-point routes"
ip -n "${pods[0]}" addr show eth0
ip -n "${pods[0]}" route; ip -n "${pods[0]}" -6 route | grep -v fe80

step "node: host-side veths, in link group 8, with the gateway and a route per pod"
ip -n "$node" -d link show group 8 | grep -E '^[0-9]+:|alias'
ip -n "$node" addr show group 8 | grep -E 'inet'
ip -n "$node" route

pod2_v4=$(ip -n "${pods[1]}" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
pod2_v6=$(ip -n "${pods[1]}" -6 -o addr show eth0 scope global | awk '{print $4}' | cut -d/ -f1)
step "traffic: pod1 -> pod2 over IPv4 ($pod2_v4) and IPv6 ($pod2_v6), routed by the node"
ip netns exec "${pods[0]}" ping -c 2 -W 2 "$pod2_v4"
ip netns exec "${pods[0]}" ping -c 2 -W 2 "$pod2_v6"

step "host-local's store (the reference's format): one file per address, holding containerID and ifname"
for f in "$data"/demo/*; do printf '%-22s %s\n' "$(basename "$f")" "$(tr -s '\r\n' ' ' <"$f")"; done

step "STATUS (CNI 1.1): ptp and host-local are ready for ADDs"
cni STATUS "" "" && echo "STATUS ok"

step "DEL both pods (a second DEL is a no-op)"
for i in 0 1; do cni DEL "c$((i + 1))" "${pods[$i]}"; cni DEL "c$((i + 1))" "${pods[$i]}"; done
echo "veths left in the node: $(ip -n "$node" -o link show type veth | wc -l)"
echo "addresses still reserved: $(find "$data" -name '10.*' -o -name 'fd88*' | wc -l)"

step "done: removing the namespaces"
