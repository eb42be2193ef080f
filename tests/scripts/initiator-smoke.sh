# Rig initiator against the peer: NVMe/TCP discover + connect + fio verify,
# then iSCSI sendtargets discovery + login + fio verify.
set -e
PEER=10.55.0.3
mkdir -p /etc/nvme
nvme gen-hostnqn > /etc/nvme/hostnqn

wait_dev() {
    for _ in $(seq 100); do [ -b "$1" ] && return 0; sleep 0.1; done
    echo "no $1"; return 1
}
verify() {
    fio --name=verify --filename=$1 --rw=randwrite --bs=4k --size=32m --iodepth=8 \
        --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1
}

nvme discover -t tcp -a $PEER -s 4420
nvme connect -t tcp -n nqn.2014-08.org.ironbay:peer-vda -a $PEER -s 4420
wait_dev /dev/nvme0n1
nvme list
verify /dev/nvme0n1
nvme disconnect-all

iscsid -f &
sleep 1
iscsiadm -m discovery -t sendtargets -p $PEER:3260
iscsiadm -m node -T iqn.2003-01.org.ironbay:peer-vdb -p $PEER:3260 --login
wait_dev /dev/sda
verify /dev/sda
iscsiadm -m node --logoutall=all
echo INITIATOR-OK
