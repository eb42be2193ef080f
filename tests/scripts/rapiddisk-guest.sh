# Rig host for RapidDisk caches (tests/tests/rig_rapiddisk.rs): a RAM cache
# over the appliance's virtio-blk disk in each mode (write-through,
# write-around, write-back), exported over NVMe-oF/TCP. For each, nvme-cli
# connects, fio writes a region of REGION_MIB with random 4k-64k writes and
# checks it (crc32c), two read-only passes check it again (the second one
# served by the cache), a 16 MiB blob of known SHA-256 follows the region;
# the SHA-256 of both as read through the cache is printed for the host,
# which compares them with its backing file once the cache is removed.
# Write-back: right after the writes the guest disconnects, the host removes
# the export and makes it again while the cache may still hold dirty data,
# and the guest checks everything through the new export.
#
# The test on the host does the operator's part (REST on 9118, JSON-RPC).
# At each `step NAME` the script prints WAIT-NAME and blocks until the host
# has done its part and connects to port 7000 (inside the test's namespace).
# busybox sh: no bash here.
set -e
trap 'rc=$?; [ $rc -eq 0 ] || dmesg | grep -iE "nvme|blk_update|I/O error" | tail -40; exit $rc' EXIT
A=10.55.0.10
H=nqn.2014-08.org.ironbay:rig-rapiddisk
REGION_MIB=64
BLOB_MIB=16

step() {
    echo "WAIT-$1"
    nc -l -p 7000 < /dev/null > /dev/null
    echo "GO-$1"
}
nsdev() {
    for _ in $(seq 300); do
        for d in /dev/nvme*n1; do [ -b "$d" ] && { echo "$d"; return 0; }; done
        sleep 0.2
    done
    echo "no NVMe namespace" >&2; return 1
}
gone() {
    for _ in $(seq 300); do
        ls /dev/nvme*n1 > /dev/null 2>&1 || return 0
        sleep 0.2
    done
    echo "the namespace stayed after disconnect" >&2; return 1
}
# fio_job DEV OFF_MIB TAG [fio options]: random writes of 4k-64k over the
# region, each block once, checked after; with --verify_only the same job
# replays as a read pass that checks what it wrote.
fio_job() {
    dev=$1; off=$2; tag=$3; shift 3
    case $tag in wt) seed=1001 ;; wa) seed=1002 ;; *) seed=1003 ;; esac
    fio --name="rd-$tag" --filename="$dev" --ioengine=libaio --direct=1 \
        --rw=randwrite --bsrange=4k-64k --iodepth=16 \
        --offset="${off}M" --size="${REGION_MIB}M" \
        --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
        --randseed=$seed "$@" > /tmp/fio.out 2>&1 ||
        { cat /tmp/fio.out; echo "FIO-FAILED $tag $*"; return 1; }
    grep -iE "err=|verify" /tmp/fio.out | head -3 || true
}
# sha DEV OFF_MIB LEN_MIB: SHA-256 of that stretch, read around the page cache.
sha() {
    dd if="$1" bs=1M skip="$2" count="$3" iflag=direct 2> /dev/null | sha256sum | cut -d' ' -f1
}
# check_mode TAG DEV OFF_MIB: the read passes of TAG's fio job and the
# SHA-256 lines.
check_mode() {
    fio_job "$2" "$3" "$1" --verify_only
    fio_job "$2" "$3" "$1" --verify_only
    echo "FIO-READ-VERIFY-OK $1"
    echo "SHA-REGION $1 $(sha "$2" "$3" $REGION_MIB)"
    echo "SHA-BLOB $1 $(sha "$2" $(($3 + REGION_MIB)) $BLOB_MIB)"
}
# connect NQN: the namespace's device once it shows.
connect() {
    nvme connect -t tcp -a $A -s 4420 -n "$1" --hostnqn=$H > /dev/null
    nsdev
}
# disconnect NQN
disconnect() {
    nvme disconnect -n "$1"
    gone
}
# write_mode TAG DEV OFF_MIB: fio's random writes over the region, then the
# blob after it; VERIFY=0 leaves fio's own check for the read passes.
write_mode() {
    tag=$1; D=$2; off=$3
    echo "DEV $tag $D sectors=$(cat "/sys/block/$(basename "$D")/size")"
    fio_job "$D" "$off" "$tag" --do_verify="${VERIFY:-1}"
    echo "FIO-WRITE-OK $tag"
    dd if=/dev/urandom of="/tmp/blob-$tag" bs=1M count=$BLOB_MIB 2> /dev/null
    sha256sum "/tmp/blob-$tag" | cut -d' ' -f1 > "/tmp/blob-$tag.sha"
    dd if="/tmp/blob-$tag" of="$D" bs=1M seek=$((off + REGION_MIB)) oflag=direct 2> /dev/null
    echo "SHA-BLOB-WRITTEN $tag $(cat "/tmp/blob-$tag.sha")"
}
# read_mode TAG DEV OFF_MIB: the read passes, the SHA-256 lines, the blob.
read_mode() {
    check_mode "$1" "$2" "$3"
    got=$(sha "$2" $(($3 + REGION_MIB)) $BLOB_MIB)
    want=$(cat "/tmp/blob-$1.sha")
    [ "$got" = "$want" ] || { echo "BLOB-MISMATCH $1: wrote $want, read $got"; return 1; }
    echo "MODE-DONE $1"
}

step wt
D=$(connect nqn.2016-06.io.spdk:rc-wt)
write_mode wt "$D" 0
read_mode wt "$D" 0
disconnect nqn.2016-06.io.spdk:rc-wt
step wa
D=$(connect nqn.2016-06.io.spdk:rc-wa)
write_mode wa "$D" 128
read_mode wa "$D" 128
disconnect nqn.2016-06.io.spdk:rc-wa
# Write-back: straight from the writes to the export change, so that the
# cache still holds what it has not written back yet; then everything is
# checked through the new export.
step wb
D=$(connect nqn.2016-06.io.spdk:rc-wb)
VERIFY=0 write_mode wb "$D" 256
disconnect nqn.2016-06.io.spdk:rc-wb
step wb-reexport
D=$(connect nqn.2016-06.io.spdk:rc-wb)
read_mode wb "$D" 256
disconnect nqn.2016-06.io.spdk:rc-wb
echo RAPIDDISK-GUEST-OK
