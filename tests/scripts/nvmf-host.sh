# Rig host against the appliance's NVMe-oF/TCP target: discovery on 4420
# and 8009, a refused host NQN, two namespaces, ext4 across a reconnect, a
# namespace added while connected, fio verify with header and data digests,
# and reads with SQ flow control off (C2HData SUCCESS).
# e2fsprogs by full path: busybox's mke2fs applet comes first on PATH.
set -e
# On failure, what the host driver said.
trap 'rc=$?; [ $rc -eq 0 ] || dmesg | grep -i nvme | tail -40; exit $rc' EXIT
A=10.55.0.10
NQN=nqn.2016-06.io.spdk:cnode1
OPEN=nqn.2016-06.io.spdk:open
H=nqn.2014-08.org.ironbay:rig-host
STRANGER=nqn.2014-08.org.ironbay:stranger

# The block device of namespace $1 (one subsystem is connected at a time).
dev() {
    for _ in $(seq 300); do
        for d in /dev/nvme*n"$1"; do [ -b "$d" ] && { echo "$d"; return 0; }; done
        sleep 0.2
    done
    echo "namespace $1 did not appear" >&2; return 1
}
conn() { nvme connect -t tcp -a $A -s 4420 -n $NQN --hostnqn=$H "$@"; }
disc() {
    nvme disconnect -n $NQN
    for _ in $(seq 100); do ls /dev/nvme*n* >/dev/null 2>&1 || return 0; sleep 0.1; done
}

nvme discover -t tcp -a $A -s 4420 --hostnqn=$H > /tmp/d4420
cat /tmp/d4420
grep -q "subnqn: *$NQN" /tmp/d4420
grep -q "subnqn: *$OPEN" /tmp/d4420
echo DISCOVERY-4420-OK
nvme discover -t tcp -a $A -s 8009 --hostnqn=$H > /tmp/d8009
grep -q "subnqn: *$NQN" /tmp/d8009 && grep -q "trsvcid: *4420" /tmp/d8009
echo DISCOVERY-8009-OK
nvme discover -t tcp -a $A -s 8009 --hostnqn=$STRANGER > /tmp/dstranger
if grep -q "subnqn: *$NQN" /tmp/dstranger; then
    echo "discovery showed $NQN to a host not on its allow list"; exit 1
fi
grep -q "subnqn: *$OPEN" /tmp/dstranger
echo DISCOVERY-FILTERED

if nvme connect -t tcp -a $A -s 4420 -n $NQN --hostnqn=$STRANGER; then
    echo "a host not on the allow list connected"; exit 1
fi
echo STRANGER-REFUSED

conn
D1=$(dev 1)
D2=$(dev 2)
nvme list
nvme id-ctrl "$D1" | tee /tmp/idctrl | grep -E "^(vid|sn|mn|fr|mdts|cntlid|ver|nn|oncs|sgls|subnqn|ioccsz|kas) " || true
grep -q "ironbay" /tmp/idctrl && echo ID-CTRL-OK
nvme id-ns "$D1" | tee /tmp/idns | grep -E "^(nsze|ncap|nuse|nlbaf|flbas|nguid|eui64|lbaf  0)" || true
grep -q "^nsze *: 0x30000" /tmp/idns && echo ID-NS-OK
echo SIZES $(cat /sys/block/$(basename "$D1")/size) $(cat /sys/block/$(basename "$D2")/size)

/sbin/mke2fs -q -F -t ext4 "$D1"
mkdir -p /mnt
mount -t ext4 "$D1" /mnt
for i in 1 2 3 4; do dd if=/dev/urandom of=/mnt/file$i bs=1M count=4 2>/dev/null; done
mkdir /mnt/dir && echo "hello from the rig" > /mnt/dir/note
(cd /mnt && md5sum file1 file2 file3 file4 dir/note) > /tmp/sums
umount /mnt
disc

conn
D1=$(dev 1)
/sbin/e2fsck -fn "$D1" && echo FSCK-CLEAN
mount -t ext4 "$D1" /mnt
(cd /mnt && md5sum -c /tmp/sums) && echo FILES-INTACT
umount /mnt

# The test adds namespace 3 over JSON-RPC when it sees this line.
echo WAITING-FOR-NS3
D3=$(dev 3)
echo NS3-APPEARED $(cat /sys/block/$(basename "$D3")/size)
disc

conn --hdr-digest --data-digest
D2=$(dev 2)
echo DIGESTS-CONNECTED
fio --name=verify --filename="$D2" --rw=randwrite --bs=4k --size=24m --iodepth=16 \
    --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1
fio --name=big --filename="$D2" --rw=write --bs=128k --offset=32m --size=16m --iodepth=4 \
    --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1
disc

conn --disable-sqflow
D2=$(dev 2)
fio --name=verify --filename="$D2" --rw=randwrite --bs=4k --size=24m --iodepth=16 \
    --ioengine=libaio --direct=1 --verify=crc32c --verify_only=1 --verify_fatal=1
disc
echo NVMF-HOST-OK
