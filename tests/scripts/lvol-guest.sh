# Rig host for logical volumes (tests/tests/rig_lvol.rs): a thin lvol over
# NVMe-oF/TCP with ext4 and files; a snapshot taken while it is mounted
# (frozen); the snapshot's clone over iSCSI, mounted, same files; writes to
# the clone leave the origin alone; files deleted on the origin and fstrim
# return clusters to the store.
#
# The test on the host does the operator's part over JSON-RPC. At each
# `step NAME` the script prints WAIT-NAME and blocks until the host has done
# its part and connects to port 7000 (inside the test's namespace).
# e2fsprogs by full path: busybox's mke2fs applet comes first on PATH.
set -e
trap 'rc=$?; [ $rc -eq 0 ] || dmesg | grep -iE "nvme|iscsi|scsi|sd[a-z]|ext4|jbd2" | tail -60; exit $rc' EXIT
A=10.55.0.10
NQN=nqn.2016-06.io.spdk:origin
H=nqn.2014-08.org.ironbay:rig-host
T=$A:3260
IQN=iqn.2016-06.io.spdk:clone0
O=/mnt/origin
C=/mnt/clone
# Files written before the snapshot: 4 x 16 MiB. After it: 3 x 32 MiB (the
# test expects them to fill 24 clusters of 4 MiB).
B_MIB=32

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
sddev() {
    for _ in $(seq 300); do
        for d in /dev/sd?; do [ -b "$d" ] && { echo "$d"; return 0; }; done
        sleep 0.2
    done
    echo "no SCSI disk" >&2; return 1
}
logout() {
    iscsiadm -m node -T $IQN -p $T --logout
    for _ in $(seq 100); do ls /dev/sd? >/dev/null 2>&1 || return 0; sleep 0.1; done
    echo "the SCSI disk stayed after logout" >&2; return 1
}
# Reads come from the appliance, not the page cache.
uncached() { sync; echo 3 > /proc/sys/vm/drop_caches; }

nvme connect -t tcp -a $A -s 4420 -n $NQN --hostnqn=$H
D=$(nsdev)
Q=/sys/block/$(basename "$D")/queue
echo "ORIGIN $D sectors=$(cat /sys/block/$(basename "$D")/size)" \
    "discard_granularity=$(cat $Q/discard_granularity) discard_max_bytes=$(cat $Q/discard_max_bytes)"
[ "$(cat $Q/discard_max_bytes)" -gt 0 ] || { echo "the namespace offers no discard"; exit 1; }

# Inode tables and journal written now, not by ext4lazyinit later: the
# host counts clusters and wants no background writer.
/sbin/mke2fs -q -F -t ext4 -b 4096 -E lazy_itable_init=0,lazy_journal_init=0 "$D"
mkdir -p $O $C
mount -t ext4 "$D" $O
for i in 1 2 3 4; do dd if=/dev/urandom of=$O/file$i bs=1M count=16 2>/dev/null; done
mkdir $O/dir && echo "written on the origin before the snapshot" > $O/dir/note
(cd $O && md5sum file1 file2 file3 file4 dir/note) > /tmp/a.sums
sync
echo FILES-WRITTEN

# Snapshot while mounted. Frozen, so the snapshot is a clean file system
# (journal flushed, needs_recovery cleared) holding every write made so far.
fsfreeze --freeze $O
step snapshot
fsfreeze --unfreeze $O
echo THAWED
# The origin keeps working on top of the snapshot.
dd if=/dev/urandom of=$O/after-snapshot bs=1M count=4 2>/dev/null
sync

step clone
iscsid -f &
sleep 1
iscsiadm -m discovery -t sendtargets -p $T
iscsiadm -m node -T $IQN -p $T --login
S=$(sddev)
echo "CLONE $S sectors=$(cat /sys/block/$(basename "$S")/size)"
dmesg -c > /dev/null
# Read-write: the clone is to be written. Frozen at the snapshot, it needs
# no journal replay; a replay would mean the snapshot missed the freeze.
mount -t ext4 "$S" $C
dmesg | grep -i "ext4" || true
if dmesg | grep -qi "recover"; then echo "the clone needed journal recovery"; exit 1; fi
echo CLONE-MOUNTED-CLEAN
(cd $C && md5sum -c /tmp/a.sums) && echo CLONE-SAME-FILES
if [ -e $C/after-snapshot ]; then echo "the clone shows a file written after the snapshot"; exit 1; fi

# Writes to the clone: an overwrite, a delete, a new file, a new note.
dd if=/dev/urandom of=$C/file1 bs=1M count=16 conv=notrunc 2>/dev/null
rm $C/file2
dd if=/dev/urandom of=$C/clone-only bs=1M count=8 2>/dev/null
echo "written on the clone" > $C/dir/note
(cd $C && md5sum file1 clone-only dir/note) > /tmp/c.sums
grep -E " (file3|file4)$" /tmp/a.sums >> /tmp/c.sums
umount $C
uncached
(cd $O && md5sum -c /tmp/a.sums) && echo ORIGIN-UNCHANGED
if [ -e $O/clone-only ]; then echo "the origin shows the clone's file"; exit 1; fi
# A new session: what the clone holds now comes from the appliance.
logout
iscsiadm -m node -T $IQN -p $T --login
S=$(sddev)
/sbin/e2fsck -fn "$S" && echo CLONE-FSCK-CLEAN
mount -t ext4 "$S" $C
(cd $C && md5sum -c /tmp/c.sums) && echo CLONE-WRITES-KEPT
if [ -e $C/file2 ]; then echo "file2 deleted on the clone is back"; exit 1; fi
umount $C
logout

# Thin provisioning: new files on the origin take clusters; deleted and
# trimmed, they go back to the store.
step before-b
for i in 1 2 3; do dd if=/dev/urandom of=$O/b$i bs=1M count=$B_MIB 2>/dev/null; done
sync
echo "B-WRITTEN $(df -k $O | tail -1)"
step written-b
rm $O/b1 $O/b2 $O/b3
sync
fstrim -v $O
echo TRIMMED
step trimmed

uncached
(cd $O && md5sum -c /tmp/a.sums) && echo ORIGIN-FILES-AFTER-TRIM
umount $O
/sbin/e2fsck -fn "$D" && echo ORIGIN-FSCK-CLEAN
nvme disconnect -n $NQN
echo LVOL-GUEST-OK
