#!/usr/bin/env bash
# Captures real keepalived advertisements for vrrp/tests/wire.rs. Run by hand, as root, not in
# CI: `vrrp/tests/captures/capture.sh` (writes next to itself). Needs keepalived, tcpdump, ip.
#
# For each case it builds two throwaway network namespaces joined by a veth (198.18.200.1 runs
# keepalived, 198.18.200.2 runs tcpdump), writes <case>.conf, runs keepalived until tcpdump
# has seen a few advertisements, and stores the first one as <case>.hex: the whole IPv4
# datagram, as tcpdump -x prints it (no link-layer header). Everything is removed at the end.
set -euo pipefail

out=$(cd "$(dirname "$0")" && pwd)
ver=$(keepalived --version 2>&1 | sed -n 's/^Keepalived v\([0-9.]*\).*/\1/p')
[[ -n $ver ]] || { echo "capture.sh: cannot read the keepalived version" >&2; exit 1; }
tag=$$
ns_ka=vrrpcap-ka-$tag
ns_cap=vrrpcap-cap-$tag
work=$(mktemp -d /tmp/vrrpcap.XXXXXX)
ka_pid=

cleanup() {
    if [[ -n $ka_pid ]] && kill -0 "$ka_pid" 2>/dev/null; then
        kill "$ka_pid"
        wait "$ka_pid" 2>/dev/null || true
    fi
    ka_pid=
    ip netns del "$ns_ka" 2>/dev/null || true
    ip netns del "$ns_cap" 2>/dev/null || true
}
trap 'cleanup; rm -rf "$work"' EXIT

# setup: fresh namespaces for one case (the VIPs keepalived adds go with them).
setup() {
    cleanup
    ip netns add "$ns_ka"
    ip netns add "$ns_cap"
    ip -n "$ns_ka" link add vcap0 type veth peer name vcap1 netns "$ns_cap"
    ip -n "$ns_ka" addr add 198.18.200.1/24 dev vcap0
    ip -n "$ns_cap" addr add 198.18.200.2/24 dev vcap1
    for ns in "$ns_ka" "$ns_cap"; do
        ip -n "$ns" link set lo up
    done
    ip -n "$ns_ka" link set vcap0 up
    ip -n "$ns_cap" link set vcap1 up
}

# conf VERSION VRID PRIORITY ADVERT_INT UNICAST(0/1) OLD_CHECKSUM(0/1) VIP...
conf() {
    local version=$1 vrid=$2 prio=$3 advert=$4 unicast=$5 old=$6
    shift 6
    echo "global_defs {"
    echo "    router_id vrrpcap"
    echo "    vrrp_version $version"
    echo "}"
    echo "vrrp_instance VI_CAP {"
    echo "    state BACKUP"
    echo "    interface vcap0"
    echo "    virtual_router_id $vrid"
    echo "    priority $prio"
    echo "    advert_int $advert"
    if ((unicast)); then
        echo "    unicast_src_ip 198.18.200.1"
        echo "    unicast_peer {"
        echo "        198.18.200.2"
        echo "    }"
    fi
    if ((old)); then
        echo "    old_unicast_checksum"
    fi
    echo "    virtual_ipaddress {"
    for vip in "$@"; do
        echo "        $vip/32"
    done
    echo "    }"
    echo "}"
}

# capture CASE CONF-ARGS...: one case, start to finish.
capture() {
    local case=keepalived-$ver-$1
    shift
    setup
    conf "$@" >"$out/$case.conf"
    ip netns exec "$ns_cap" timeout 60 tcpdump -i vcap1 -n -U -c 3 -w "$work/$case.pcap" 'ip proto 112' \
        2>"$work/$case.tcpdump.log" &
    local dump_pid=$!
    sleep 1 # tcpdump is listening
    ip netns exec "$ns_ka" keepalived -n -l -D --vrrp -f "$out/$case.conf" \
        -p "$work/$case.pid" -r "$work/$case.vrrp.pid" >"$work/$case.keepalived.log" 2>&1 &
    ka_pid=$!
    if ! wait "$dump_pid"; then
        echo "capture.sh: $case: no advertisements; keepalived said:" >&2
        cat "$work/$case.keepalived.log" >&2
        exit 1
    fi
    {
        echo "# One IPv4 datagram (header included) sent by keepalived $ver with $case.conf,"
        echo "# captured by capture.sh in this directory."
        tcpdump -r "$work/$case.pcap" -n -x -c 1 2>/dev/null |
            sed -n 's/^[[:space:]]*0x[0-9a-f]*:[[:space:]]*//p' | tr -d ' '
    } >"$out/$case.hex"
    cleanup
    echo "capture.sh: wrote $case.hex"
}

vips=(198.18.200.100 198.18.200.101 198.18.200.102)
#        case                      ver vrid prio advert unicast old VIPs
capture v3-multicast               3   51   150  0.05   0       0   "${vips[@]}"
capture v3-unicast                 3   52   200  0.05   1       0   "${vips[@]:0:2}"
capture v3-unicast-old-checksum    3   53   120  0.05   1       1   "${vips[@]:0:1}"
capture v2-multicast               2   61   150  3      0       0   "${vips[@]}"
capture v2-unicast                 2   62   90   2      1       0   "${vips[@]:0:2}"
