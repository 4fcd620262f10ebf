#!/usr/bin/env bash
# The main job, end to end in throwaway namespaces: a "node" netns running the chain
# ptp -> linkgroup -> masquerade for two pods, with addresses from our host-local, and an "outside" host
# behind the node's uplink. Shows the kernel state, pod-to-pod traffic, masqueraded egress as the outside
# host sees it, then removes everything (also on failure). The machine's own network is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="demo$$"
node="$tag-node"; outside="$tag-out"; pods=("$tag-pod1" "$tag-pod2")
data=$(mktemp -d)
bin="$PWD/target/release"

cleanup() {
    for ns in "${pods[@]}" "$node" "$outside"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$data"
}
trap cleanup EXIT

# The conflist, one plugin config per entry; the runtime adds cniVersion, name and prevResult.
types=(ptp linkgroup masquerade)
plugins=(
  '"type":"ptp","mtu":1400,"ipam":{"type":"host-local","dataDir":"'"$data"'",
     "ranges":[[{"subnet":"10.88.0.0/24"}],[{"subnet":"fd88::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}'
  '"type":"linkgroup","group":8'
  '"type":"masquerade","mode":"group","podGroup":8,"excludeGroups":[9]'
)
config() { # plugin-index [prevResult]
    echo "{\"cniVersion\":\"1.1.0\",\"name\":\"demo\",${plugins[$1]}${2:+,\"prevResult\":$2}}"
}

# Run one plugin per the protocol inside the node netns: env + config on stdin.
cni() { # verb plugin-index container pod-netns [prevResult]
    config "$2" "${5:-}" | ip netns exec "$node" env CNI_COMMAND="$1" CNI_CONTAINERID="$3" \
        CNI_NETNS="${4:+/var/run/netns/$4}" CNI_IFNAME=eth0 CNI_PATH="$bin:/usr/lib/cni" "$bin/${types[$2]}"
}

# What a runtime does with a conflist: ADD in order, each result the next one's prevResult.
chain_add() { # container pod-netns -> final result
    local prev=""
    for i in "${!types[@]}"; do prev=$(cni ADD "$i" "$1" "$2" "$prev"); done
    echo "$prev"
}
chain_del() { # container pod-netns prevResult (DEL in reverse order)
    for ((i = ${#types[@]} - 1; i >= 0; i--)); do cni DEL "$i" "$1" "$2" "$3"; done
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ip netns add "$node"; ip netns add "$outside"
for p in "${pods[@]}"; do ip netns add "$p"; done
# The node's uplink to the outside host, which has no route to the pods.
ip -n "$node" link add uplink type veth peer name eth0 netns "$outside"
ip -n "$node" addr add 192.0.2.1/24 dev uplink; ip -n "$node" link set uplink up
ip -n "$outside" addr add 192.0.2.2/24 dev eth0; ip -n "$outside" link set eth0 up

step "ADD: ptp -> linkgroup -> masquerade for two pods (CNI 1.1.0)"
results=()
for i in 0 1; do
    results[i]=$(chain_add "c$((i + 1))" "${pods[$i]}")
    echo "pod$((i + 1)) result: ${results[$i]}"
done

step "pod1: its interface and the point-to-point routes"
ip -n "${pods[0]}" addr show eth0
ip -n "${pods[0]}" route; ip -n "${pods[0]}" -6 route | grep -v fe80

step "node: host-side veths, in link group 8 (linkgroup), with the gateway and a route per pod"
ip -n "$node" -d link show group 8 | grep -E '^[0-9]+:|alias'
ip -n "$node" route

step "node: nftables (masquerade): one rule for the pod group, however many pods"
ip netns exec "$node" nft list ruleset

pod2_v4=$(ip -n "${pods[1]}" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
pod2_v6=$(ip -n "${pods[1]}" -6 -o addr show eth0 scope global | awk '{print $4}' | cut -d/ -f1)
step "traffic: pod1 -> pod2 over IPv4 ($pod2_v4) and IPv6 ($pod2_v6), routed by the node"
ip netns exec "${pods[0]}" ping -c 2 -W 2 "$pod2_v4"
ip netns exec "${pods[0]}" ping -c 2 -W 2 "$pod2_v6"

step "egress: pod1 connects to the outside host 192.0.2.2:8080, which sees the node's address"
ip netns exec "$outside" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 8080)); s.listen()
s.settimeout(10); c, peer = s.accept(); print("outside host: connection from", peer[0])' &
listener=$!
sleep 0.3
ip netns exec "${pods[0]}" bash -c 'exec 3<>/dev/tcp/192.0.2.2/8080' && echo "pod1: connected"
wait "$listener"

step "host-local's store (the reference's format): one file per address, holding containerID and ifname"
for f in "$data"/demo/*; do printf '%-22s %s\n' "$(basename "$f")" "$(tr -s '\r\n' ' ' <"$f")"; done

step "STATUS (CNI 1.1): every plugin of the chain is ready for ADDs"
for i in "${!types[@]}"; do cni STATUS "$i" "" "" && echo "${types[$i]}: ready"; done

step "DEL both pods in reverse order (a second DEL is a no-op)"
for i in 0 1; do
    chain_del "c$((i + 1))" "${pods[$i]}" "${results[$i]}"; chain_del "c$((i + 1))" "${pods[$i]}" "${results[$i]}"
done
echo "veths left in the node: $(ip -n "$node" -o link show group 8 | wc -l)"
echo "addresses still reserved: $(find "$data" -name '10.*' -o -name 'fd88*' | wc -l)"

step "GC with no pods left: our nftables table goes"
for i in "${!types[@]}"; do
    config "$i" | sed 's/}$/,"cni.dev\/valid-attachments":[]}/' | ip netns exec "$node" env CNI_COMMAND=GC \
        CNI_PATH="$bin:/usr/lib/cni" "$bin/${types[$i]}"
done
echo "nftables tables in the node: $(ip netns exec "$node" nft list tables | wc -l)"

step "done: removing the namespaces"
