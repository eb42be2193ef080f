# Rig peer: Linux nvmet (NVMe/TCP, port 4420) and LIO (iSCSI, port 3260)
# exporting the virtio-blk disks /dev/vda (nvmet) and /dev/vdb (LIO) and two
# null_blk devices, then idling until the test stops the VM.
set -e
PEER=10.55.0.3
NQN=nqn.2014-08.org.ironbay:peer

rmmod null_blk
insmod /lib/modules/null_blk.ko nr_devices=2 gb=4 queue_mode=2 irqmode=0

cfg=/sys/kernel/config/nvmet
mkdir $cfg/ports/1
echo tcp > $cfg/ports/1/addr_trtype
echo ipv4 > $cfg/ports/1/addr_adrfam
echo $PEER > $cfg/ports/1/addr_traddr
echo 4420 > $cfg/ports/1/addr_trsvcid
nvmet() {
    s=$cfg/subsystems/$NQN-$1
    mkdir $s
    echo 1 > $s/attr_allow_any_host
    mkdir $s/namespaces/1
    echo -n $2 > $s/namespaces/1/device_path
    echo 1 > $s/namespaces/1/enable
    ln -s $s $cfg/ports/1/subsystems/$NQN-$1
}
nvmet vda /dev/vda
nvmet null /dev/nullb0

t=/sys/kernel/config/target
mkdir -p $t/iscsi
lio() {
    iqn=iqn.2003-01.org.ironbay:peer-$1
    b=$t/core/iblock_$3/$1
    mkdir -p $b
    echo "udev_path=$2" > $b/control
    echo 1 > $b/enable
    g=$t/iscsi/$iqn/tpgt_1
    mkdir -p $g/lun/lun_0
    ln -s $b $g/lun/lun_0/$1
    mkdir $g/np/$PEER:3260
    echo 0 > $g/attrib/authentication
    echo 1 > $g/attrib/generate_node_acls
    echo 1 > $g/attrib/cache_dynamic_acls
    echo 0 > $g/attrib/demo_mode_write_protect
    echo 1 > $g/enable
}
lio vdb /dev/vdb 0
lio null /dev/nullb1 1

iperf3 -s -D
echo PEER-READY
while true; do sleep 3600; done
