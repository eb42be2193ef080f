#!/usr/bin/env bash
# The RapidDisk-style REST API of a booted appliance, checked with curl and
# jq as RapidDisk's own users drive it (tests/tests/rapiddisk.rs runs it):
# every endpoint of /work/shared/seeds/rapiddisk-rest-api.md, its JSON
# shapes, and the errors (HTTP 400 {"status":"Failed","message":...}) for a
# wrong method, an unknown path, a bad number, an unknown volume and a
# refused operation.
#
#   rapiddisk-api.sh REST_PORT RPC_PORT [NBD_PORT]
#
# REST_PORT: 127.0.0.1 port forwarded to the appliance's 9118; RPC_PORT: to
# its JSON-RPC 5260 (NVMe-oF subsystem and NBD exports are made there);
# NBD_PORT: to 10809 on the data NIC (optional: the usage and flush checks
# that need data written, with qemu-io). The appliance must be fresh: no
# RAM disks, an NVMe disk Nvme0n1 and a virtio-blk disk VirtioBlk0 unclaimed.
# EXPECT_NVME_SIZE / EXPECT_VBLK_SIZE (bytes), when set, are the sizes
# listAllResources must show. Stops at the first failure, saying which.
set -euo pipefail

REST=${1:?usage: rapiddisk-api.sh REST_PORT RPC_PORT [NBD_PORT]}
RPC=${2:?usage: rapiddisk-api.sh REST_PORT RPC_PORT [NBD_PORT]}
NBD=${3:-}
BASE=http://127.0.0.1:$REST/v1
NQN=nqn.2016-06.io.spdk:rdapi
MIB=1048576
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
STEP=start
CODE=

step() {
    STEP=$1
    echo "== $1"
}

fail() {
    echo "FAIL [$STEP]: $*" >&2
    if [ -s "$TMP/body" ]; then
        echo "last response body: $(head -c 2000 "$TMP/body")" >&2
    fi
    exit 1
}

# req METHOD PATH: one request; the status in CODE, the body in $TMP/body.
req() {
    : > "$TMP/body"
    CODE=$(curl -s -m 120 -o "$TMP/body" -w '%{http_code}' -X "$1" "$BASE/$2") ||
        fail "curl -X $1 $BASE/$2 failed (exit $?)"
}

# check JQ-ARGS...: the last body satisfies the jq filter.
check() {
    jq -e "$@" "$TMP/body" > /dev/null || fail "jq $* does not hold"
}

# get PATH: GET answered 200 with a JSON body.
get() {
    req GET "$1"
    [ "$CODE" = 200 ] || fail "GET $1: HTTP $CODE, want 200"
    jq -e . "$TMP/body" > /dev/null || fail "GET $1: the body is not JSON"
}

# ok PATH: POST answered 200 {"status":"Success"}.
ok() {
    req POST "$1"
    [ "$CODE" = 200 ] || fail "POST $1: HTTP $CODE, want 200"
    check '.status == "Success"'
}

# refused METHOD PATH: HTTP 400 {"status":"Failed","message":"..."}.
refused() {
    req "$1" "$2"
    [ "$CODE" = 400 ] || fail "$1 $2: HTTP $CODE, want 400"
    check '.status == "Failed" and (.message | type == "string" and length > 0)'
    echo "   $1 $2 -> 400: $(jq -r .message "$TMP/body")"
}

# rpc METHOD [PARAMS]: a JSON-RPC call that must work; prints its result.
# rpc_try: the same, but an error reply only prints it and returns 1.
rpc_call() {
    python3 - "$RPC" "$1" "${2:-}" <<'EOF'
import json, socket, sys
port, method, params = int(sys.argv[1]), sys.argv[2], sys.argv[3]
req = {"jsonrpc": "2.0", "id": 1, "method": method}
if params:
    req["params"] = json.loads(params)
s = socket.create_connection(("127.0.0.1", port), timeout=120)
s.sendall(json.dumps(req).encode())
buf = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("JSON-RPC %s: connection closed after %r" % (method, buf))
    buf += chunk
    try:
        reply = json.loads(buf)
        break
    except ValueError:
        pass
if "error" in reply:
    print(json.dumps(reply["error"]))
    sys.exit(2)
print(json.dumps(reply.get("result")))
EOF
}
rpc() {
    local out
    out=$(rpc_call "$@") || fail "JSON-RPC $1 ${2:-}: $out"
    echo "$out"
}
rpc_try() {
    rpc_call "$@" || return 1
}

# The RAM disks / caches listRapidDiskVolumes shows, one JSON object a line.
rd_list() {
    get listRapidDiskVolumes
    check '(.volumes | length == 2) and (.volumes[0].rapiddisk | type == "array")
           and (.volumes[1].rapiddisk_cache | type == "array")'
}
# rd_has NAME FILTER: RAM disk NAME is listed and satisfies FILTER.
rd_has() {
    rd_list
    check --arg n "$1" "[.volumes[0].rapiddisk[] | select(.device == \$n)] | length == 1"
    check --arg n "$1" ".volumes[0].rapiddisk[] | select(.device == \$n) | $2"
}
rd_absent() {
    rd_list
    check --arg n "$1" "[.volumes[0].rapiddisk[] | select(.device == \$n)] | length == 0"
}
rd_usage() {
    rd_list
    jq -r --arg n "$1" '.volumes[0].rapiddisk[] | select(.device == $n) | .usage' "$TMP/body"
}
# qio EXPORT CMD: qemu-io over NBD; fails on any error or miscompare.
qio() {
    local out
    out=$(qemu-io -f raw -c "$2" "nbd://127.0.0.1:$NBD/$1" 2>&1) || fail "qemu-io $1 '$2': $out"
    case "$out" in
        *failed* | *Failed*) fail "qemu-io $1 '$2': $out" ;;
    esac
}

step "checkServiceStatus"
get checkServiceStatus
check '.status == "OK" and (.version | type == "string" and length > 0)'
echo "   $(cat "$TMP/body")"

step "listAllResources"
get listAllResources
check '.resources | type == "array" and length == 2'
check '.resources[0].memory | type == "array" and length == 1'
check '.resources[0].memory[0] | (.mem_total | type == "number" and . > 0)
       and (.mem_free | type == "number" and . >= 0) and .mem_free <= .mem_total'
check '.resources[1].volumes | type == "array"'
check '.resources[1].volumes | all((.device | type == "string") and (.size | type == "number")
       and (.vendor | type == "string") and (.model | type == "string"))'
for d in Nvme0n1 VirtioBlk0; do
    check --arg d "$d" '[.resources[1].volumes[] | select(.device == $d and .size > 0)] | length == 1'
done
if [ -n "${EXPECT_NVME_SIZE:-}" ]; then
    check --argjson s "$EXPECT_NVME_SIZE" '.resources[1].volumes[] | select(.device == "Nvme0n1") | .size == $s'
fi
if [ -n "${EXPECT_VBLK_SIZE:-}" ]; then
    check --argjson s "$EXPECT_VBLK_SIZE" '.resources[1].volumes[] | select(.device == "VirtioBlk0") | .size == $s'
fi
MEM_FREE0=$(jq '.resources[0].memory[0].mem_free' "$TMP/body")
echo "   $(jq -c '.resources[0].memory[0]' "$TMP/body"), $(jq -c '[.resources[1].volumes[].device]' "$TMP/body")"

step "empty at first"
rd_list
check '.volumes[0].rapiddisk == [] and .volumes[1].rapiddisk_cache == []'

step "createRapidDisk: rd0, rd1 in order, usage 0"
ok createRapidDisk/64
rd_has rd0 '.size == 67108864 and .usage == 0 and .status == "unlocked"'
ok createRapidDisk/32
rd_has rd1 '.size == 33554432 and .usage == 0 and .status == "unlocked"'
rd_list
check '(.volumes[0].rapiddisk | length == 2) and
       (.volumes[0].rapiddisk | all(keys == ["device", "size", "status", "usage"]))'
# A bdev like any other, to SPDK's methods.
BDEVS=$(rpc bdev_get_bdevs '{"name":"rd0"}')
echo "$BDEVS" | jq -e '.[0].product_name == "RapidDisk" and .[0].num_blocks * .[0].block_size == 67108864' \
    > /dev/null || fail "bdev_get_bdevs rd0: $BDEVS"
get listAllResources
check --argjson f "$MEM_FREE0" '.resources[0].memory[0].mem_free <= $f'

step "removeRapidDisk, then the lowest free name again"
ok removeRapidDisk/rd0
rd_absent rd0
rd_has rd1 '.size == 33554432'
ok createRapidDisk/16
rd_has rd0 '.size == 16777216 and .usage == 0'
ok createRapidDisk/8
rd_has rd2 '.size == 8388608'

step "resizeRapidDisk: grows, never shrinks"
ok resizeRapidDisk/rd0/48
rd_has rd0 '.size == 50331648 and .usage == 0'
refused POST resizeRapidDisk/rd0/32
refused POST resizeRapidDisk/rd0/48
rd_has rd0 '.size == 50331648'

step "lockRapidDisk / unlockRapidDisk"
ok lockRapidDisk/rd1
rd_has rd1 '.status == "locked"'
rd_has rd0 '.status == "unlocked"'
ok unlockRapidDisk/rd1
rd_has rd1 '.status == "unlocked"'

step "wrong methods"
rd_list
BEFORE=$(jq -c . "$TMP/body")
refused GET createRapidDisk/8
refused GET resizeRapidDisk/rd0/64
refused GET flushRapidDisk/rd0
refused GET removeRapidDisk/rd0
refused GET lockRapidDisk/rd0
refused GET unlockRapidDisk/rd0
refused GET createRapidDiskCache/rd0/VirtioBlk0/write-through
refused GET removeRapidDiskCache/rc-wt_VirtioBlk0
refused POST checkServiceStatus
refused POST listAllResources
refused POST listRapidDiskVolumes
refused POST listAllNVMeTargets
refused POST listAllNVMePorts
refused POST showRapidDiskCacheStats/rc-wt_VirtioBlk0
refused PUT createRapidDisk/8
refused DELETE removeRapidDisk/rd0
refused PATCH checkServiceStatus
rd_list
[ "$(jq -c . "$TMP/body")" = "$BEFORE" ] || fail "a refused request changed the volumes: $BEFORE"

step "unknown paths"
refused GET nothingHere
refused POST nothingHere/rd0
refused GET ""
refused GET checkServiceStatus/extra
refused POST createRapidDisk
refused POST createRapidDisk/
refused POST createRapidDisk/8/extra
refused POST resizeRapidDisk/rd0
refused POST createRapidDiskCache/rd0/VirtioBlk0
refused POST createRapidDiskCache/rd0/VirtioBlk0/write-through/extra
refused GET showRapidDiskCacheStats
refused GET ../v2/checkServiceStatus
CODE=$(curl -s -m 60 -o "$TMP/body" -w '%{http_code}' "http://127.0.0.1:$REST/checkServiceStatus") || fail "curl"
[ "$CODE" = 400 ] || fail "GET /checkServiceStatus (no /v1): HTTP $CODE, want 400"
check '.status == "Failed"'

step "bad numbers"
for n in 0 -1 abc 99999999999999999999 1.5 0x10 " 8" 8abc ""; do
    refused POST "createRapidDisk/$(jq -rn --arg n "$n" '$n | @uri')"
    refused POST "resizeRapidDisk/rd0/$(jq -rn --arg n "$n" '$n | @uri')"
done
# A number, but more memory than there is.
refused POST createRapidDisk/1048576
refused POST resizeRapidDisk/rd0/1048576
rd_list
[ "$(jq -c . "$TMP/body")" = "$BEFORE" ] || fail "a refused request changed the volumes: $BEFORE"

step "unknown volumes"
refused POST resizeRapidDisk/rd9/64
refused POST flushRapidDisk/rd9
refused POST removeRapidDisk/rd9
refused POST lockRapidDisk/rd9
refused POST unlockRapidDisk/rd9
refused POST createRapidDiskCache/rd9/VirtioBlk0/write-through
refused POST createRapidDiskCache/rd0/NoSuchBdev/write-through
refused POST removeRapidDiskCache/rc-wt_NoSuchBdev
refused GET showRapidDiskCacheStats/rc-wt_NoSuchBdev
# Names of things that are not RAM disks / caches.
refused POST removeRapidDisk/Nvme0n1
refused POST flushRapidDisk/VirtioBlk0
refused POST lockRapidDisk/Nvme0n1
refused POST resizeRapidDisk/VirtioBlk0/2048
refused POST removeRapidDiskCache/rd0
refused GET showRapidDiskCacheStats/rd0
refused POST createRapidDiskCache/rd0/VirtioBlk0/write-sideways
rd_list
[ "$(jq -c . "$TMP/body")" = "$BEFORE" ] || fail "a refused request changed the volumes: $BEFORE"

if [ -n "$NBD" ]; then
    step "usage counts 4 KiB pages written; flush gives them back"
    EXPORT=$(rpc nbd_get_disks | jq -r '.[] | select(.bdev_name == "rd1") | .nbd_device' | head -1)
    if [ -z "$EXPORT" ]; then
        EXPORT=$(rpc nbd_start_disk '{"bdev_name":"rd1"}' | jq -r .)
    fi
    echo "   rd1 is NBD export $EXPORT"
    qio "$EXPORT" "write -P 0x5a 0 1M"
    [ "$(rd_usage rd1)" = $MIB ] || fail "usage $(rd_usage rd1) after 1 MiB written, want $MIB"
    # 512 bytes take a whole page.
    qio "$EXPORT" "write -P 0x5b 4M 512"
    [ "$(rd_usage rd1)" = $((MIB + 4096)) ] || fail "usage $(rd_usage rd1) after 1 MiB + 512 B, want $((MIB + 4096))"
    # Rewriting held pages takes no more.
    qio "$EXPORT" "write -P 0x5c 0 1M"
    [ "$(rd_usage rd1)" = $((MIB + 4096)) ] || fail "usage $(rd_usage rd1) after a rewrite"
    qio "$EXPORT" "read -P 0x5c 0 1M"
    # Exported: not removable.
    refused POST removeRapidDisk/rd1
    ok flushRapidDisk/rd1
    rd_has rd1 '.usage == 0 and .size == 33554432'
    qio "$EXPORT" "read -P 0 0 1M"
    qio "$EXPORT" "read -P 0 4M 4k"
    ok flushRapidDisk/rd1
    rpc nbd_stop_disk "{\"nbd_device\":\"$EXPORT\"}" > /dev/null
else
    echo "== (no NBD port: usage after writes not checked)"
    ok flushRapidDisk/rd1
    rd_has rd1 '.usage == 0'
fi

# wt/wa statistics: RapidDisk's dm-rapiddisk-cache counters.
WT_KEYS='["cache_hits","cache_reads","cache_writes","device","disk_reads","disk_writes","read_invalidates","reads","replacement","uncached_reads","uncached_writes","write_invalidates","write_replacement","writes"]'
# wb statistics: dm-writecache's.
WB_KEYS='["device","errors","num_blocks","num_free_blocks","num_wb_blocks"]'
for mode in write-through write-around write-back; do
    case $mode in
        write-through) rc=rc-wt_VirtioBlk0 ;;
        write-around) rc=rc-wa_VirtioBlk0 ;;
        write-back) rc=rc-wb_VirtioBlk0 ;;
    esac
    step "createRapidDiskCache $mode: $rc"
    ok "createRapidDiskCache/rd0/VirtioBlk0/$mode"
    rd_list
    check --arg rc "$rc" --arg m "$mode" \
        '.volumes[1].rapiddisk_cache == [{"device": $rc, "cache": "rd0", "source": "VirtioBlk0", "mode": $m}]'
    BDEVS=$(rpc bdev_get_bdevs "{\"name\":\"$rc\"}")
    echo "$BDEVS" | jq -e '.[0].product_name == "RapidDisk cache"' > /dev/null ||
        fail "bdev_get_bdevs $rc: $BDEVS"
    # Refused while the cache uses them.
    refused POST removeRapidDisk/rd0
    refused POST "createRapidDiskCache/rd1/VirtioBlk0/$mode"
    refused POST "createRapidDiskCache/rd0/Nvme0n1/$mode"
    # The same cache twice.
    refused POST "createRapidDiskCache/rd0/VirtioBlk0/$mode"
    get "showRapidDiskCacheStats/$rc"
    check '.statistics | type == "array" and length == 1'
    check '.statistics[0].cache_stats | type == "array" and length == 1'
    check --arg rc "$rc" '.statistics[0].cache_stats[0].device == $rc'
    if [ $mode = write-back ]; then
        check --argjson k "$WB_KEYS" '.statistics[0].cache_stats[0] | keys == $k'
        check '.statistics[0].cache_stats[0] | (del(.device) | all(.[]; type == "number"))
               and .num_blocks > 0 and .num_free_blocks <= .num_blocks
               and .num_wb_blocks == 0 and .errors == 0'
    else
        check --argjson k "$WT_KEYS" '.statistics[0].cache_stats[0] | keys == $k'
        check '.statistics[0].cache_stats[0] | del(.device) | all(.[]; type == "number" and . >= 0)'
    fi
    echo "   $(jq -c '.statistics[0].cache_stats[0]' "$TMP/body")"
    refused POST "showRapidDiskCacheStats/$rc"
    refused GET "removeRapidDiskCache/$rc"
    ok "removeRapidDiskCache/$rc"
    rd_list
    check '.volumes[1].rapiddisk_cache == []'
    refused GET "showRapidDiskCacheStats/$rc"
    refused POST "removeRapidDiskCache/$rc"
done
# A cache on the NVMe disk too, with another RAM disk.
step "createRapidDiskCache over Nvme0n1"
ok createRapidDiskCache/rd1/Nvme0n1/write-around
rd_list
check '.volumes[1].rapiddisk_cache == [{"device": "rc-wa_Nvme0n1", "cache": "rd1", "source": "Nvme0n1", "mode": "write-around"}]'
ok createRapidDiskCache/rd0/VirtioBlk0/write-back
rd_list
check '.volumes[1].rapiddisk_cache | length == 2'
check '[.volumes[1].rapiddisk_cache[].device] | sort == ["rc-wa_Nvme0n1", "rc-wb_VirtioBlk0"]'
ok removeRapidDiskCache/rc-wa_Nvme0n1
ok removeRapidDiskCache/rc-wb_VirtioBlk0
rd_list
check '.volumes[1].rapiddisk_cache == []'

step "NVMe-oF targets and ports"
rpc_try nvmf_create_transport '{"trtype":"TCP"}' > /dev/null || echo "   (TCP transport exists)"
rpc nvmf_create_subsystem "{\"nqn\":\"$NQN\",\"allow_any_host\":true,\"serial_number\":\"IRONBAYRDAPI0001\"}" > /dev/null
rpc nvmf_subsystem_add_ns "{\"nqn\":\"$NQN\",\"namespace\":{\"nsid\":1,\"bdev_name\":\"rd2\"}}" > /dev/null
rpc nvmf_subsystem_add_listener "{\"nqn\":\"$NQN\",\"listen_address\":{\"trtype\":\"TCP\",\"adrfam\":\"IPv4\",\"traddr\":\"0.0.0.0\",\"trsvcid\":\"4420\"}}" > /dev/null
get listAllNVMeTargets
echo "   $(jq -c . "$TMP/body")"
check '.targets | type == "array" and length == 2'
check '.targets[0].nvmet_targets | type == "array"'
check '.targets[1].nvmet_ports | type == "array"'
check '.targets[0].nvmet_targets | all((.nqn | type == "string") and (.namespace | type == "number")
       and (.device | type == "string") and (.enabled == "true" or .enabled == "false"))'
check --arg q "$NQN" '[.targets[0].nvmet_targets[] | select(.nqn == $q)] | length == 1'
check --arg q "$NQN" '.targets[0].nvmet_targets[] | select(.nqn == $q)
       | .namespace == 1 and (.device | test("(^|/)rd2$")) and .enabled == "true"'
check '.targets[1].nvmet_ports | all((.port | type == "number") and (.address | type == "string")
       and (.protocol | type == "string") and (.nqn | type == "string"))'
check --arg q "$NQN" '[.targets[1].nvmet_ports[] | select(.nqn == $q)] | length >= 1'
check --arg q "$NQN" '.targets[1].nvmet_ports[] | select(.nqn == $q) | (.protocol | ascii_downcase) == "tcp"'
get listAllNVMePorts
echo "   $(jq -c . "$TMP/body")"
check '.targets | type == "array" and length == 1'
check '.targets[0].nvmet_ports | type == "array" and length >= 1'
check '.targets[0].nvmet_ports | all((.port | type == "number") and (.address | type == "string")
       and (.protocol | type == "string"))'
check '[.targets[0].nvmet_ports[] | select((.protocol | ascii_downcase) == "tcp")] | length >= 1'
# A namespace of a subsystem: exported, not removable.
refused POST removeRapidDisk/rd2
rd_has rd2 '.size == 8388608'
rpc nvmf_delete_subsystem "{\"nqn\":\"$NQN\"}" > /dev/null
get listAllNVMeTargets
check --arg q "$NQN" '[.targets[0].nvmet_targets[] | select(.nqn == $q)] | length == 0'
check --arg q "$NQN" '[.targets[1].nvmet_ports[] | select(.nqn == $q)] | length == 0'

step "remove everything"
for rd in rd2 rd1 rd0; do
    ok "removeRapidDisk/$rd"
    rd_absent "$rd"
done
rd_list
check '.volumes[0].rapiddisk == [] and .volumes[1].rapiddisk_cache == []'
get checkServiceStatus
check '.status == "OK"'
echo "RAPIDDISK-API-OK"
