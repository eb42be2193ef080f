#!/usr/bin/env python3
"""Persistent dirty bitmaps across reboots, with qemu.qmp, qemu-io and
nbdinfo. Run once per boot of the same disks, with the phase as argument:

  setup     a store and a volume (JSON-RPC), persistent bitmap b0 and a
            non-persistent bitmap t0 (QMP, t0 by a transaction after an
            aborted one), writes over NBD; the test then
            shuts the appliance down in order (spdk_kill_instance)
  orderly   b0 came back with the same count, recording; t0 did not; the
            bitmap exported as qemu:dirty-bitmap:b0 lists exactly the
            written extents; more writes; the test then cuts the power
  cut       b0 is inconsistent: it refuses use and export, removal works;
            a new persistent b1; orderly shutdown again
  final     b0 is gone for good, b1 is back consistent

Environment: QMP_PORT, NBD_PORT, RPC_PORT (forwarded to 4444, 10809, 5260).
"""

import asyncio
import sys

from qemu.qmp import ExecuteError, QMPClient

from appliance import QMP, check, nbd, nbd_map, rpc, run

KIB, MIB = 1 << 10, 1 << 20
GRAN = 64 * KIB
# (offset, length) written in the first boot, and what the bitmap then
# holds in whole chunks.
WRITES = [(0, 4 * KIB), (3 * MIB + 60 * KIB, 8 * KIB), (7 * MIB, 200 * KIB)]
DIRTY = [(0, GRAN), (3 * MIB, 2 * GRAN), (7 * MIB, 4 * GRAN)]


def dirty_runs(uri):
    """The dirty extents nbdinfo --map reports for qemu:dirty-bitmap:b0."""
    return [(o, n) for o, n, f in nbd_map(uri, "qemu:dirty-bitmap:b0") if f & 1]


async def bitmaps(q, node):
    nodes = {n["node-name"]: n for n in await q.execute("query-named-block-nodes")}
    return {b["name"]: b for b in nodes[node].get("dirty-bitmaps", [])}


async def fails(q, cmd, args, text):
    try:
        await q.execute(cmd, args)
    except ExecuteError as e:
        check(e.error_class == "GenericError" and text in str(e), f"{cmd} refused: {e}")
        return
    check(False, f"{cmd} {args} should fail")


def volume():
    vols = [b for b in rpc("bdev_get_bdevs") if "lvs/vol" in b.get("aliases", [])]
    check(len(vols) == 1, "the volume was tasted")
    return vols[0]["name"]


async def setup(q):
    rpc("bdev_lvol_create_lvstore", {"bdev_name": "Nvme0n1", "lvs_name": "lvs",
                                     "cluster_sz": MIB})
    vol = rpc("bdev_lvol_create", {"lvs_name": "lvs", "lvol_name": "vol",
                                   "size_in_mib": 16, "thin_provision": True})
    await q.execute("block-dirty-bitmap-add", {"node": vol, "name": "b0",
                                               "granularity": GRAN, "persistent": True})
    # A transaction is all or nothing: an abort leaves no bitmap behind,
    # not even a persistent one in the store.
    add = {"type": "block-dirty-bitmap-add"}
    await fails(q, "transaction", {"actions": [
        dict(add, data={"node": vol, "name": "t0"}),
        dict(add, data={"node": vol, "name": "x", "persistent": True}),
        {"type": "abort", "data": {}}]}, "Transaction aborted")
    check(set(await bitmaps(q, vol)) == {"b0"}, "the aborted transaction left nothing")
    await q.execute("transaction", {"actions": [dict(add, data={"node": vol, "name": "t0"})]})
    await fails(q, "block-dirty-bitmap-add",
                {"node": "VirtioBlk0", "name": "p", "persistent": True},
                "only logical volumes")
    await q.execute("block-export-add", {"type": "nbd", "id": "w", "node-name": vol,
                                         "name": "vol", "writable": True})
    for off, n in WRITES:
        run("qemu-io", "-f", "raw", "-c", f"write -P 0x5a {off} {n}", nbd("vol"))
    b = await bitmaps(q, vol)
    want = sum(n for _, n in DIRTY)
    check(b["b0"]["count"] == want and b["b0"]["persistent"], f"b0 before shutdown: {b}")
    await q.execute("block-export-del", {"id": "w"})


async def orderly(q):
    vol = volume()
    b = await bitmaps(q, vol)
    check(set(b) == {"b0"}, f"only the persistent bitmap came back: {sorted(b)}")
    b0 = b["b0"]
    check(b0["count"] == sum(n for _, n in DIRTY) and b0["recording"]
          and b0["persistent"] and b0["granularity"] == GRAN
          and "inconsistent" not in b0, f"b0 after an orderly reboot: {b0}")
    # A backup tool sees exactly what changed before the reboot.
    await q.execute("block-export-add", {"type": "nbd", "id": "r", "node-name": vol,
                                         "name": "vol-b0", "bitmaps": ["b0"]})
    check(dirty_runs(nbd("vol-b0")) == DIRTY, "qemu:dirty-bitmap:b0 lists the writes")
    await q.execute("block-export-del", {"id": "r"})
    # It still records: this write is lost with the power cut that follows.
    await q.execute("block-export-add", {"type": "nbd", "id": "w", "node-name": vol,
                                         "name": "vol", "writable": True})
    run("qemu-io", "-f", "raw", "-c", "write -P 0x6b 12M 4k", nbd("vol"))
    b0 = (await bitmaps(q, vol))["b0"]
    check(b0["count"] == sum(n for _, n in DIRTY) + GRAN, "the new write is recorded")


async def cut(q):
    vol = volume()
    b0 = (await bitmaps(q, vol))["b0"]
    check(b0.get("inconsistent") is True and not b0["recording"] and b0["persistent"],
          f"b0 after a power cut is inconsistent: {b0}")
    for cmd in ("block-dirty-bitmap-enable", "block-dirty-bitmap-clear"):
        await fails(q, cmd, {"node": vol, "name": "b0"}, "inconsistent")
    await fails(q, "block-export-add", {"type": "nbd", "id": "r", "node-name": vol,
                                        "bitmaps": ["b0"]}, "inconsistent")
    await q.execute("block-dirty-bitmap-remove", {"node": vol, "name": "b0"})
    await q.execute("block-dirty-bitmap-add", {"node": vol, "name": "b1",
                                               "persistent": True, "disabled": True})
    check(set(await bitmaps(q, vol)) == {"b1"}, "b0 removed, b1 added")


async def final(q):
    vol = volume()
    b = await bitmaps(q, vol)
    check(set(b) == {"b1"}, f"the removal lasted: {sorted(b)}")
    b1 = b["b1"]
    check(not b1["recording"] and b1["count"] == 0 and "inconsistent" not in b1
          and b1["granularity"] == MIB, f"b1 kept its state and the store's granularity: {b1}")


async def main():
    q = QMPClient("persist")
    await q.connect(("127.0.0.1", QMP))
    phase = sys.argv[1]
    # As with qemu-storage-daemon, each boot starts its NBD server.
    await q.execute("nbd-server-start", {"addr": {"type": "inet", "host": "10.0.3.15",
                                                  "port": "10809"}})
    await {"setup": setup, "orderly": orderly, "cut": cut, "final": final}[phase](q)
    await q.disconnect()
    if phase in ("setup", "cut"):
        rpc("spdk_kill_instance", {"sig_name": "SIGTERM"})
    print(f"qmp-persist: {sys.argv[1]} passed", flush=True)


asyncio.run(main())
