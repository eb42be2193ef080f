#!/bin/busybox sh
# ironbay rig guest: bring up the system, run the script from fw_cfg
# (opt/run), print its output between markers, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /var/run /run/lock
while read -r m; do
    insmod "/lib/modules/$m" 2>/dev/null || echo "rig: insmod $m failed"
done < /lib/modules/load.order
mount -t configfs configfs /sys/kernel/config

ip=""; gw=""; iqn="iqn.2004-10.org.ironbay:rig"
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rig.ip=*) ip="${arg#rig.ip=}" ;;
        rig.gw=*) gw="${arg#rig.gw=}" ;;
        rig.iqn=*) iqn="${arg#rig.iqn=}" ;;
    esac
done
ip link set lo up
if [ -n "$ip" ]; then
    ip link set eth0 up
    ip addr add "$ip" dev eth0
    [ -n "$gw" ] && ip route add default via "$gw"
fi
echo "InitiatorName=$iqn" > /etc/iscsi/initiatorname.iscsi

script=/sys/firmware/qemu_fw_cfg/by_name/opt/run/raw
echo "=====RIG-BEGIN====="
if [ -r "$script" ]; then
    cp "$script" /run/script.sh
    sh /run/script.sh
    rc=$?
else
    echo "rig: no script (opt/run)"
    rc=99
fi
echo "=====RIG-END rc=$rc====="
sync
poweroff -f
