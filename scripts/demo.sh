#!/usr/bin/env bash
# Local demo of the weave mesh on simulated hosts.
#
# Three hosts are network namespaces on one bridge (10.40.0.1-3). nftables
# drops all traffic between h1 and h3, so they can only reach each other
# through h2. Each host runs a router (mesh + encrypted sleeve data plane)
# with a shared password and one container (a namespace attached to the
# host's `weave` bridge as 10.32.0.N/12). The containers ping each other
# across hosts (c1 <-> c3 relayed by h2), then every host prints its view:
# peers, connections (with the reason the h1-h3 dial fails), routes (h1
# reaches h3 via h2) and data-plane paths. Everything is torn down at the
# end, even on error or Ctrl-C.
#
# DNS across hosts joins this demo with the router issue.
#
# Needs root. Set WEAVE_DEMO_BIN to a built mesh-node to skip the build.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: needs root to create network namespaces; run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/.."

BIN=${WEAVE_DEMO_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release -q -p weave-examples --bin mesh-node
    BIN=$PWD/target/release/mesh-node
fi

P="wvdemo$$"
LAN="$P-lan"
HOSTS=("$P-h1" "$P-h2" "$P-h3")
CONTAINERS=("$P-c1" "$P-c2" "$P-c3")
PIDS=()
OUT=$(mktemp -d)

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${CONTAINERS[@]}" "${HOSTS[@]}" "$LAN"; do ip netns del "$ns" 2>/dev/null || true; done
    if [ -n "${WEAVE_DEMO_KEEP_LOGS:-}" ]; then cp -r "$OUT" "$WEAVE_DEMO_KEEP_LOGS"; fi
    rm -rf "$OUT"
}
trap cleanup EXIT INT TERM

echo "== creating hosts ${HOSTS[*]} $LAN"
ip netns add "$LAN"
ip -n "$LAN" link add br0 type bridge
ip -n "$LAN" link set br0 up
for i in 1 2 3; do
    ns=${HOSTS[$((i - 1))]}
    ip netns add "$ns"
    ip -n "$LAN" link add "h$i" type veth peer name eth0 netns "$ns"
    ip -n "$LAN" link set "h$i" master br0 up
    ip -n "$ns" addr add "10.40.0.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done

echo "== creating containers ${CONTAINERS[*]}"
for c in "${CONTAINERS[@]}"; do ip netns add "$c"; done

echo "== cutting h1 <-> h3 with nftables"
for pair in "1 3" "3 1"; do
    set -- $pair
    ip netns exec "${HOSTS[$(($1 - 1))]}" nft -f - <<NFT
table inet wvdemo {
    chain in  { type filter hook input priority 0; ip saddr 10.40.0.$2 drop; }
    chain out { type filter hook output priority 0; ip daddr 10.40.0.$2 drop; }
}
NFT
done

echo "== starting a router on each host, attaching c1-c3 (h1 and h3 both dial h2, and each other)"
export WEAVE_PASSWORD=demo-password
ROUTER=(--dataplane sleeve --status-after 7 --linger 2)
ip netns exec "${HOSTS[0]}" "$BIN" --name ::1 --nickname h1 --listen 10.40.0.1:6783 "${ROUTER[@]}" --attach "${CONTAINERS[0]}=10.32.0.1/12" 10.40.0.2 10.40.0.3 >"$OUT/h1" 2>"$OUT/h1.err" &
PIDS+=($!)
ip netns exec "${HOSTS[1]}" "$BIN" --name ::2 --nickname h2 --listen 10.40.0.2:6783 "${ROUTER[@]}" --attach "${CONTAINERS[1]}=10.32.0.2/12" >"$OUT/h2" 2>"$OUT/h2.err" &
PIDS+=($!)
ip netns exec "${HOSTS[2]}" "$BIN" --name ::3 --nickname h3 --listen 10.40.0.3:6783 "${ROUTER[@]}" --attach "${CONTAINERS[2]}=10.32.0.3/12" 10.40.0.2 10.40.0.1 >"$OUT/h3" 2>"$OUT/h3.err" &
PIDS+=($!)

sleep 3
ping_from() { # container-index destination
    local c=${CONTAINERS[$(($1 - 1))]} i
    for i in $(seq 20); do
        ip netns exec "$c" ping -c 1 -W 1 "$2" >/dev/null 2>&1 && break
    done
    echo "== c$1 pings $2"
    ip netns exec "$c" ping -c 3 -i 0.2 "$2" || status=1
}
status=0
ping_from 1 10.32.0.3   # relayed by h2: h1 and h3 cannot reach each other
ping_from 3 10.32.0.1
ping_from 1 10.32.0.2

for i in 1 2 3; do
    wait "${PIDS[$((i - 1))]}" || { status=1; echo "h$i failed:"; cat "$OUT/h$i.err"; }
done
PIDS=()
for i in 1 2 3; do
    echo
    echo "== status of h$i"
    cat "$OUT/h$i"
done
echo
echo "== tearing down"
exit $status
