# Rig host for targetd exports (tests/tests/rig_targetd.rs): two initiator
# names (open-iscsi ifaces) log in to targetd's one target and each sees only
# its own LUNs; CHAP set with initiator_set_auth is required and mutual CHAP
# is checked by the initiator; ext4 with files through a volume made with
# vol_create, fsck clean; vol_copy of it holds the same files.
#
# The test on the host does the operator's part over targetd's API. At each
# `step NAME` the script prints WAIT-NAME and blocks until the host has done
# its part and connects to port 7000 (inside the test's namespace).
set -e
trap 'rc=$?; [ $rc -eq 0 ] || dmesg | grep -iE "iscsi|scsi|sd[a-z]|ext4" | tail -40; exit $rc' EXIT
P=10.55.0.10:3260
T=iqn.2003-01.org.example.mach1:1234
IA=iqn.1994-05.com.domain:01.alpha
IB=iqn.1994-05.com.domain:01.bravo
M=/mnt/vol

step() {
    echo "WAIT-$1"
    nc -l -p 7000 < /dev/null > /dev/null
    echo "GO-$1"
}
# The SCSI disks of the session on iface $1, as "sdX:sectors" sorted by LUN.
disks() {
    for _ in $(seq 100); do
        out=""
        for h in /sys/class/iscsi_session/session*; do
            [ -e "$h" ] || continue
            [ "$(cat $h/ifacename)" = "$1" ] || continue
            for d in $h/device/target*/*:*:*:*/block/*; do
                [ -e "$d" ] || continue
                lun=$(basename "$(dirname "$(dirname "$d")")" | cut -d: -f4)
                out="$out$lun:$(basename $d):$(cat $d/size) "
            done
        done
        [ -n "$out" ] && { echo "$out" | tr ' ' '\n' | sort -n | grep . ; return 0; }
        sleep 0.2
    done
    echo "no disks on $1" >&2; return 1
}
node() { iscsiadm -m node -T $T -p $P -I "$1" "${@:2}"; }
set_auth() {
    node "$1" -o update -n node.session.auth.authmethod -v CHAP
    node "$1" -o update -n node.session.auth.username -v "$2"
    node "$1" -o update -n node.session.auth.password -v "$3"
    if [ -n "$4" ]; then
        node "$1" -o update -n node.session.auth.username_in -v "$4"
        node "$1" -o update -n node.session.auth.password_in -v "$5"
    fi
}
logout_all() { iscsiadm -m node --logoutall=all > /dev/null 2>&1 || true; sleep 0.5; }

iscsid -f &
sleep 1
for i in ifa:$IA ifb:$IB; do
    iscsiadm -m iface -I ${i%%:*} -o new > /dev/null
    iscsiadm -m iface -I ${i%%:*} -o update -n iface.initiatorname -v ${i#*:} > /dev/null
    iscsiadm -m iface -I ${i%%:*} -o update -n iface.transport_name -v tcp > /dev/null
done

step exports
iscsiadm -m discovery -t sendtargets -p $P -I ifa -I ifb
# B: no CHAP, one LUN of 32 MiB.
node ifb --login
echo "B-DISKS $(disks ifb | tr '\n' ' ')"
[ "$(disks ifb | wc -l)" = 1 ] && disks ifb | grep -q "^0:.*:65536$" && echo B-SEES-OWN-LUN
logout_all
# A: CHAP required. Without it, and with a wrong secret, no login.
if node ifa --login 2>/dev/null; then echo "A logged in without CHAP"; exit 1; fi
echo A-REFUSED-WITHOUT-CHAP
set_auth ifa alpha wrong-secret-12
if node ifa --login 2>/dev/null; then echo "A logged in with a wrong secret"; exit 1; fi
echo A-REFUSED-WRONG-SECRET
# Mutual: the initiator checks the target's answer; a wrong expectation fails.
set_auth ifa alpha alpha-secret-12 target wrong-target-12
if node ifa --login 2>/dev/null; then echo "the initiator accepted a wrong target secret"; exit 1; fi
echo MUTUAL-WRONG-REFUSED
set_auth ifa alpha alpha-secret-12 target target-secret-12
node ifa --login
echo "A-DISKS $(disks ifa | tr '\n' ' ')"
[ "$(disks ifa | wc -l)" = 1 ] && disks ifa | grep -q "^0:.*:131072$" && echo A-SEES-OWN-LUN
D=/dev/$(disks ifa | head -1 | cut -d: -f2)
/sbin/mke2fs -q -F -t ext4 -b 4096 "$D"
mkdir -p $M
mount -t ext4 "$D" $M
for i in 1 2 3; do dd if=/dev/urandom of=$M/file$i bs=1M count=8 2>/dev/null; done
mkdir $M/dir && echo "made through targetd" > $M/dir/note
(cd $M && md5sum file1 file2 file3 dir/note) > /tmp/v.sums
umount $M
/sbin/e2fsck -fn "$D" && echo VOL-FSCK-CLEAN
logout_all

step copy
# B now also sees the copy as LUN 1: the same files.
node ifb --login
echo "B-DISKS $(disks ifb | tr '\n' ' ')"
[ "$(disks ifb | wc -l)" = 2 ] && echo B-SEES-TWO-LUNS
C=/dev/$(disks ifb | grep "^1:" | cut -d: -f2)
/sbin/e2fsck -fn "$C" && echo COPY-FSCK-CLEAN
mount -t ext4 -o ro "$C" $M
(cd $M && md5sum -c /tmp/v.sums) && echo COPY-SAME-FILES
umount $M
logout_all
echo TARGETD-GUEST-OK
