# Rig initiator against the appliance's iSCSI target: discovery and login
# with CHAP (mutual for the session), ext4 across a logout, fio verify with
# header and data digests, and the refusals.
# e2fsprogs by full path: busybox's mke2fs applet comes first on PATH.
set -e
T=10.55.0.10:3260
IQN=iqn.2016-06.io.spdk:disk0

disk() {
    for _ in $(seq 200); do
        for d in /dev/sd?; do [ -b "$d" ] && { echo "$d"; return 0; }; done
        sleep 0.1
    done
    echo "no SCSI disk" >&2; return 1
}
gone() {
    for _ in $(seq 100); do ls /dev/sd? >/dev/null 2>&1 || return 0; sleep 0.1; done
}
node() { iscsiadm -m node -T $IQN -p $T -o update -n "$1" -v "$2"; }
disc() { iscsiadm -m discoverydb -t st -p $T -o update -n "$1" -v "$2"; }
login() { iscsiadm -m node -T $IQN -p $T --login; }
logout() { iscsiadm -m node -T $IQN -p $T --logout; gone; }

iscsid -f &
sleep 1
if iscsiadm -m discovery -t sendtargets -p $T; then
    echo "discovery without CHAP was allowed"; exit 1
fi
echo NO-DISCOVERY-WITHOUT-CHAP
iscsiadm -m discoverydb -t st -p $T -o new || true
disc discovery.sendtargets.auth.authmethod CHAP
disc discovery.sendtargets.auth.username rig
disc discovery.sendtargets.auth.password rig-secret-12
iscsiadm -m discoverydb -t st -p $T --discover

node node.session.auth.authmethod CHAP
node node.session.auth.username rig
node node.session.auth.password wrong-secret-99
if login; then echo "login with a wrong secret was allowed"; exit 1; fi
echo WRONG-SECRET-REFUSED
node node.session.auth.password rig-secret-12
node node.session.auth.username_in appliance
node node.session.auth.password_in appliance-secret-12
login
D=$(disk)
/sbin/mke2fs -q -F -t ext4 "$D"
mkdir -p /mnt
mount -t ext4 "$D" /mnt
for i in 1 2 3 4; do dd if=/dev/urandom of=/mnt/file$i bs=1M count=4 2>/dev/null; done
mkdir /mnt/dir && echo "hello from the rig" > /mnt/dir/note
(cd /mnt && md5sum file1 file2 file3 file4 dir/note) > /tmp/sums
umount /mnt
logout

login
D=$(disk)
/sbin/e2fsck -fn "$D" && echo FSCK-CLEAN
mount -t ext4 "$D" /mnt
(cd /mnt && md5sum -c /tmp/sums) && echo FILES-INTACT
umount /mnt
logout

node 'node.conn[0].iscsi.HeaderDigest' CRC32C
node 'node.conn[0].iscsi.DataDigest' CRC32C
login
D=$(disk)
echo DIGESTS $(iscsiadm -m session -P 2 | awk '/HeaderDigest:/ {h=$2} /DataDigest:/ {d=$2} END {print h, d}')
fio --name=verify --filename="$D" --rw=randwrite --bs=4k --size=48m --iodepth=16 \
    --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1
logout
echo ISCSI-INITIATOR-OK
