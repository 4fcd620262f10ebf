#!/usr/bin/env bash
# The main job, end to end in throwaway namespaces: a "node" netns running the chain
# ptp -> linkgroup -> masquerade for two dual-stack pods, ptp -> egress-v4 for an IPv6-only pod and its mirror
# image ptp -> egress-v6 for an IPv4-only pod, with addresses from our host-local, and an "outside" host behind
# the node's uplink. Shows the kernel state, pod-to-pod traffic, masqueraded egress and each single-stack pod's
# egress in the other family as the outside host sees them, then removes everything (also on failure). The
# machine's own network is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="demo$$"
node="$tag-node"; outside="$tag-out"; pods=("$tag-pod1" "$tag-pod2" "$tag-pod3" "$tag-pod4")
data=$(mktemp -d)
bin="$PWD/target/release"

cleanup() {
    for ns in "${pods[@]}" "$node" "$outside"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$data"
}
trap cleanup EXIT

# Two conflists, one plugin config per entry; the runtime adds cniVersion, name and prevResult.
demo_types=(ptp linkgroup masquerade)
demo_plugins=(
  '"type":"ptp","mtu":1400,"ipam":{"type":"host-local","dataDir":"'"$data"'",
     "ranges":[[{"subnet":"10.88.0.0/24"}],[{"subnet":"fd88::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}'
  '"type":"linkgroup","group":8'
  '"type":"masquerade","mode":"group","podGroup":8,"excludeGroups":[9]'
)
# IPv6-only pods; egress-v4's link-local addresses live in a store of their own (another dataDir).
demo6_types=(ptp egress-v4)
demo6_plugins=(
  '"type":"ptp","mtu":1400,"ipam":{"type":"host-local","dataDir":"'"$data"'",
     "ranges":[[{"subnet":"fd90::/64"}]],"routes":[{"dst":"::/0"}]}'
  '"type":"egress-v4","mtu":1400,"ipam":{"type":"host-local","dataDir":"'"$data"'/egress",
     "ranges":[[{"subnet":"169.254.172.0/22"}]],"routes":[{"dst":"0.0.0.0/0"}]}'
)
# IPv4-only pods; egress-v6's unique-local addresses live in a store of their own.
demo4_types=(ptp egress-v6)
demo4_plugins=(
  '"type":"ptp","mtu":1400,"ipam":{"type":"host-local","dataDir":"'"$data"'",
     "ranges":[[{"subnet":"10.91.0.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}'
  '"type":"egress-v6","mtu":1400,"ipam":{"type":"host-local","dataDir":"'"$data"'/egress6",
     "ranges":[[{"subnet":"fd00::ac:00/118"}]],"routes":[{"dst":"::/0"}]}'
)
use_chain() { # demo|demo6|demo4
    local t="$1_types[@]" p="$1_plugins[@]"
    net=$1; types=("${!t}"); plugins=("${!p}")
}
use_chain demo
config() { # plugin-index [prevResult]
    echo "{\"cniVersion\":\"1.1.0\",\"name\":\"$net\",${plugins[$1]}${2:+,\"prevResult\":$2}}"
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
ip -n "$node" addr add 192.0.2.1/24 dev uplink; ip -n "$node" addr add 2001:db8::1/64 dev uplink nodad
ip -n "$outside" addr add 192.0.2.2/24 dev eth0; ip -n "$outside" addr add 2001:db8::2/64 dev eth0 nodad
ip -n "$node" link set uplink up; ip -n "$outside" link set eth0 up
# The node's default routes (egress-v4 and egress-v6 take nodeIP from them); the IPv6 pods are routed back.
ip -n "$node" route add default via 192.0.2.2
ip -n "$node" -6 route add default via 2001:db8::2
ip -n "$outside" -6 route add fd90::/64 via 2001:db8::1

# Listen on the outside host's port 8080 for one connection and say where it came from. Returns once the socket
# listens (the listener says so), so the pod's connect never races its start. Debian's own python3: a python
# earlier on PATH may be anything.
listen_outside() {
    exec {listen_fd}< <(ip netns exec "$outside" /usr/bin/python3 -u -c '
import socket
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080)); s.listen(); print("listening", flush=True); s.settimeout(30)
c, peer = s.accept(); print("outside host: connection from", peer[0].removeprefix("::ffff:"))')
    listener=$!
    local ready=""
    read -r -t 30 -u "$listen_fd" ready || true
    [ "$ready" = listening ] || { echo "the outside host's listener did not start" >&2; exit 1; }
}
# What the listener saw, once it has exited.
outside_saw() {
    cat <&"$listen_fd"; exec {listen_fd}<&-
    wait "$listener"
}

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
listen_outside
ip netns exec "${pods[0]}" bash -c 'exec 3<>/dev/tcp/192.0.2.2/8080' && echo "pod1: connected"
outside_saw

use_chain demo6
step "ADD: ptp (IPv6 only) -> egress-v4 for pod3: the result's ips stay IPv6, the new interfaces are appended"
results[2]=$(chain_add c3 "${pods[2]}")
echo "pod3 result: ${results[2]}"

step "pod3: eth0 (IPv6) and v4if0 (link-local IPv4, routed point to point through the node)"
ip -n "${pods[2]}" addr show | grep -E '^[0-9]+:|inet'
ip -n "${pods[2]}" route

step "node: nftables (egress-v4): pod3's address in the set for the node's address, one SNAT rule"
ip netns exec "$node" nft list table inet cni_chain | sed -n '/\(set\|chain\) egress_v4/,/^\t}/p'

step "egress: IPv6-only pod3 reaches the IPv4 host 192.0.2.2, which sees the node's address"
listen_outside
ip netns exec "${pods[2]}" bash -c 'exec 3<>/dev/tcp/192.0.2.2/8080' && echo "pod3: connected over IPv4"
outside_saw
step "... and its IPv6 traffic keeps the pod's own address"
listen_outside
ip netns exec "${pods[2]}" bash -c 'exec 3<>/dev/tcp/2001:db8::2/8080' && echo "pod3: connected over IPv6"
outside_saw

step "DEL pod3; egress-v4 removes its veth, set element and link-local address"
chain_del c3 "${pods[2]}" "${results[2]}"
echo "egress veths left: $(ip -n "$node" -o link show type veth | grep -c egress || true)"
echo "link-local addresses still reserved: $(find "$data/egress" -name '169.*' | wc -l)"

use_chain demo4
step "ADD: ptp (IPv4 only) -> egress-v6 for pod4, the mirror image: the result's ips stay IPv4"
results[3]=$(chain_add c4 "${pods[3]}")
echo "pod4 result: ${results[3]}"

step "pod4: eth0 (IPv4; its IPv6 switched off) and v6if0 (unique-local IPv6, routed through the node's fe80::1)"
ip -n "${pods[3]}" addr show | grep -E '^[0-9]+:|inet'
ip -n "${pods[3]}" -6 route

step "node: nftables (egress-v6): pod4's address in the set for the node's IPv6 address, one SNAT rule"
ip netns exec "$node" nft list table inet cni_chain | sed -n '/\(set\|chain\) egress_v6/,/^\t}/p'

step "egress: IPv4-only pod4 reaches the IPv6 host 2001:db8::2, which sees the node's address"
listen_outside
ip netns exec "${pods[3]}" bash -c 'exec 3<>/dev/tcp/2001:db8::2/8080' && echo "pod4: connected over IPv6"
outside_saw

step "DEL pod4; egress-v6 removes its veth, set element and unique-local address"
chain_del c4 "${pods[3]}" "${results[3]}"
echo "egress veths left: $(ip -n "$node" -o link show type veth | grep -c egress || true)"
echo "unique-local addresses still reserved: $(find "$data/egress6" -name 'fd00*' | wc -l)"
use_chain demo

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

step "GC of the three networks with no pods left: our nftables table goes"
for chain in demo demo6 demo4; do
    use_chain "$chain"
    for i in "${!types[@]}"; do
        config "$i" | sed 's/}$/,"cni.dev\/valid-attachments":[]}/' | ip netns exec "$node" env CNI_COMMAND=GC \
            CNI_PATH="$bin:/usr/lib/cni" "$bin/${types[$i]}"
    done
done
echo "nftables tables in the node: $(ip netns exec "$node" nft list tables | wc -l)"

step "done: removing the namespaces"
