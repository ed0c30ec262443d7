#!/usr/bin/env bash
# Local demo of the weave mesh on simulated hosts.
#
# Three hosts are network namespaces on one bridge (10.40.0.1-3). nftables
# drops all traffic between h1 and h3, so they can only reach each other
# through h2. Each host runs a mesh peer with a shared password; after a few
# seconds every host prints its view: peers, connections (with the reason
# the h1-h3 dial fails) and routes (h1 reaches h3 via h2). Everything is torn
# down at the end, even on error or Ctrl-C.
#
# Containers, cross-host traffic and DNS join this demo as the data plane,
# DNS and router issues land; today it shows the mesh they ride on.
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
PIDS=()
OUT=$(mktemp -d)

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for ns in "${HOSTS[@]}" "$LAN"; do ip netns del "$ns" 2>/dev/null || true; done
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

echo "== starting a mesh peer on each host (h1 and h3 both dial h2, and each other)"
export WEAVE_PASSWORD=demo-password
ip netns exec "${HOSTS[0]}" "$BIN" --name ::1 --nickname h1 --listen 10.40.0.1:6783 --status-after 6 --linger 2 10.40.0.2 10.40.0.3 >"$OUT/h1" 2>"$OUT/h1.err" &
PIDS+=($!)
ip netns exec "${HOSTS[1]}" "$BIN" --name ::2 --nickname h2 --listen 10.40.0.2:6783 --status-after 6 --linger 2 >"$OUT/h2" 2>"$OUT/h2.err" &
PIDS+=($!)
ip netns exec "${HOSTS[2]}" "$BIN" --name ::3 --nickname h3 --listen 10.40.0.3:6783 --status-after 6 --linger 2 10.40.0.2 10.40.0.1 >"$OUT/h3" 2>"$OUT/h3.err" &
PIDS+=($!)

status=0
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
