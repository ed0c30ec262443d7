#!/usr/bin/env bash
# Local demo of weave on simulated hosts, driven only through the `weave`
# command, as a user would.
#
# Three hosts are network namespaces on one LAN (10.99.0.1-3). nftables
# drops all traffic between h1 and h3, so they can only reach each other
# through h2. Each host launches a router (shared password: encrypted
# control and data), and attaches two containers (namespaces) with
# addresses from IPAM and DNS names. Containers ping each other by name
# across hosts (h1's and h3's through h2); then every host prints
# `weave status` and `weave status connections`, and everything is reset
# and removed, even on error or Ctrl-C.
#
# Needs root. Set WEAVE_DEMO_BIN to a built `weave` to skip the build.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: needs root to create network namespaces; run it as root" >&2
    exit 1
fi
cd "$(dirname "$0")/.."

BIN=${WEAVE_DEMO_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --release -q -p weave-examples --bin weave
    BIN=$PWD/target/release/weave
fi

P="wvdemo$$"
LAN="$P-lan"
HOSTS=("$P-h1" "$P-h2" "$P-h3")
CONTAINERS=("$P-c1" "$P-c2" "$P-c3" "$P-c4" "$P-c5" "$P-c6")
STATE=$(mktemp -d)

weave() { # host-index args...
    local i=$1
    shift
    ip netns exec "${HOSTS[$((i - 1))]}" "$BIN" --state-dir "$STATE/h$i" "$@"
}

cleanup() {
    for i in 1 2 3; do weave "$i" reset --force >/dev/null 2>&1 || true; done
    for ns in "${CONTAINERS[@]}" "${HOSTS[@]}" "$LAN"; do ip netns del "$ns" 2>/dev/null || true; done
    if [ -n "${WEAVE_DEMO_KEEP_LOGS:-}" ]; then cp -r "$STATE" "$WEAVE_DEMO_KEEP_LOGS"; fi
    rm -rf "$STATE"
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
    ip -n "$ns" addr add "10.99.0.$i/24" dev eth0
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
    chain in  { type filter hook input priority 0; ip saddr 10.99.0.$2 drop; }
    chain out { type filter hook output priority 0; ip daddr 10.99.0.$2 drop; }
}
NFT
done

echo "== weave launch on each host (h1 and h3 both dial h2, and each other)"
export WEAVE_PASSWORD=demo-password
OPTS=(--ipalloc-init consensus=3 --dns-upstream 127.0.0.1:53)
echo "h1: $(weave 1 launch --name ::1 --nickname h1 "${OPTS[@]}" 10.99.0.2 10.99.0.3)"
echo "h2: $(weave 2 launch --name ::2 --nickname h2 "${OPTS[@]}")"
echo "h3: $(weave 3 launch --name ::3 --nickname h3 "${OPTS[@]}" 10.99.0.2 10.99.0.1)"

echo "== weave attach: two containers per host, addresses from IPAM, names in weave.local"
for n in 1 2 3 4 5 6; do
    host=$(((n + 1) / 2))
    echo "c$n on h$host: $(weave "$host" attach -h "c$n.weave.local" "${CONTAINERS[$((n - 1))]}")"
done

status=0
ping_by_name() { # from-index to-name
    local c=${CONTAINERS[$(($1 - 1))]} i
    # Names and routes take a moment to spread through the mesh.
    for i in $(seq 50); do
        ip netns exec "$c" ping -c 1 -W 1 "$2" >/dev/null 2>&1 && break
        sleep 0.2
    done
    echo "== c$1 pings $2"
    ip netns exec "$c" ping -c 3 -i 0.2 "$2" || status=1
}
ping_by_name 1 c5   # h1 -> h3, relayed by h2
ping_by_name 6 c2   # h3 -> h1, relayed by h2
ping_by_name 3 c1   # h2 -> h1
ping_by_name 2 c1   # same host

for i in 1 2 3; do
    echo
    echo "== status of h$i"
    weave "$i" status || status=1
    echo
    echo "== status connections of h$i"
    weave "$i" status connections || status=1
done
echo
echo "== ps on h1"
weave 1 ps || status=1
echo
echo "== tearing down (weave reset on every host)"
exit $status
