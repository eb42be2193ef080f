#!/usr/bin/env python3
"""QMP against the booted appliance with QEMU's own library (qemu.qmp) and,
for what the library hides, a raw socket: greeting and negotiation, each
block command and error class, events on every monitor, and an NBD export
made over QMP used by nbdinfo, qemu-img, qemu-io and nbdcopy.

Then incremental backup of a logical volume: a dirty bitmap, a full copy,
writes, a snapshot exported with the bitmap as qemu:dirty-bitmap:b0, only
the dirty extents copied (nbdinfo --map), the copy compared byte for byte;
and qemu:allocation-depth on a clone.

Environment: QMP_PORT (forwarded to 4444), NBD_PORT (forwarded to 10809),
RPC_PORT (JSON-RPC, for the volumes), SCRATCH (a directory for files).
"""

import asyncio
import json
import os
import socket
import subprocess
import sys

from qemu.qmp import ExecuteError, QMPClient

QMP = int(os.environ["QMP_PORT"])
NBD = int(os.environ["NBD_PORT"])
RPC = int(os.environ["RPC_PORT"])
SCRATCH = os.environ["SCRATCH"]
MIB = 1 << 20


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


class Raw:
    """A monitor over a plain socket, one JSON reply per line."""

    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", QMP), timeout=30)
        self.buf = b""

    def recv(self):
        while b"\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise EOFError("closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return json.loads(line)

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())
        return self.recv()

    def error(self, data):
        r = self.send(data)
        check("error" in r, f"{data!r} is an error: {r}")
        return r["error"]["class"], r["error"]["desc"]


def protocol():
    r = Raw()
    g = r.recv()
    check("QMP" in g and g["QMP"]["capabilities"] == [] and "qemu" in g["QMP"]["version"],
          f"greeting {g}")
    cls, desc = r.error('{"execute": "query-version"}')
    check((cls, desc) == ("CommandNotFound",
                         "Expecting capabilities negotiation with 'qmp_capabilities'"),
          "commands wait for negotiation")
    check(r.send('{"execute": "qmp_capabilities", "id": "n1"}') == {"return": {}, "id": "n1"},
          "negotiation, id echoed")
    cls, desc = r.error('{"execute": "qmp_capabilities"}')
    check(cls == "CommandNotFound" and "already complete" in desc, "negotiated once")
    cls, desc = r.error('{"execute": "no-such-thing", "id": 7}')
    check((cls, desc) == ("CommandNotFound", "The command no-such-thing has not been found"),
          "unknown command")
    cls, desc = r.error('{"execute": 1}')
    check(desc == "QMP input member 'execute' must be a string", desc)
    cls, desc = r.error('[1, 2]')
    check(desc == "QMP input must be a JSON object", desc)
    cls, desc = r.error('{"exec": "x"}')
    check(cls == "GenericError", f"bad member: {desc}")
    cls, desc = r.error('{"execute": "query-block", "arguments": {"x": 1}}')
    check(desc == "Parameter 'x' is unexpected", desc)
    # A message split across writes, then two in one.
    r.s.sendall(b'{"execute": "query-')
    v = r.send(b'version"}{"execute": "query-version", "id": 2}')
    check("return" in v and r.recv()["id"] == 2, "split and joined messages")
    cls, desc = r.error('{"execute": "query-version" ]')
    check(desc.startswith("JSON parse error"), desc)
    check("return" in r.send('{"execute": "query-version"}'), "still serving after garbage")
    return r


def rpc(method, params):
    s = socket.create_connection(("127.0.0.1", RPC), timeout=60)
    s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                          "params": params}).encode())
    buf = b""
    while True:
        d = s.recv(65536)
        check(d, f"{method}: an answer")
        buf += d
        try:
            r = json.loads(buf)
            break
        except ValueError:
            pass
    check("result" in r, f"{method} {params}: {r}")
    return r["result"]


def nbd_map(uri, context):
    """nbdinfo --map: [(offset, length, flags)]."""
    out = run("nbdinfo", f"--map={context}", uri)
    runs = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].isdigit():
            runs.append((int(f[0]), int(f[1]), int(f[2])))
    return runs


def nbd(name):
    return f"nbd://127.0.0.1:{NBD}/{name}"


def run(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        print(p.stdout, p.stderr)
    check(p.returncode == 0, " ".join(cmd))
    return p.stdout


async def expect_error(q, cmd, args, cls, desc):
    try:
        r = await q.execute(cmd, args)
    except ExecuteError as e:
        got = (e.error_class, str(e))
        check(got == (cls, desc) or (desc is None and got[0] == cls),
              f"{cmd} {args} -> {got}")
        return
    check(False, f"{cmd} {args} should fail, answered {r}")


async def main():
    raw = protocol()
    a, b = QMPClient("a"), QMPClient("b")
    await a.connect(("127.0.0.1", QMP))
    await b.connect(("127.0.0.1", QMP))
    v = await a.execute("query-version")
    check("qemu" in v and "package" in v, f"query-version {v}")
    names = {c["name"] for c in await a.execute("query-commands")}
    for c in ["qmp_capabilities", "query-version", "query-commands", "query-named-block-nodes",
              "query-block", "nbd-server-start", "nbd-server-stop", "nbd-server-add",
              "nbd-server-remove", "block-export-add", "block-export-del",
              "query-block-exports"]:
        check(c in names, f"query-commands lists {c}")
    nodes = {n["node-name"]: n for n in await a.execute("query-named-block-nodes")}
    check({"Nvme0n1", "VirtioBlk0"} <= set(nodes), f"nodes {sorted(nodes)}")
    check(nodes["VirtioBlk0"]["image"]["virtual-size"] == 64 * MIB, "node size")
    blocks = await a.execute("query-block")
    check(any(x["inserted"]["node-name"] == "Nvme0n1" for x in blocks), "query-block")

    export = {"type": "nbd", "id": "e0", "node-name": "VirtioBlk0", "name": "vd",
              "writable": True, "description": "virtio disk"}
    await expect_error(a, "block-export-add", export, "GenericError", "NBD server not running")
    await expect_error(a, "nbd-server-start",
                       {"addr": {"type": "unix", "path": "/tmp/nbd.sock"}}, "GenericError", None)
    await expect_error(a, "nbd-server-start",
                       {"addr": {"type": "inet", "host": "0.0.0.0", "port": "10809"},
                        "tls-creds": "tls0"}, "GenericError", None)
    # The legacy address shape (SocketAddressLegacy) with max-connections.
    await a.execute("nbd-server-start", {"addr": {"type": "inet", "data": {
        "host": "0.0.0.0", "port": "10809"}}, "max-connections": 8})
    await expect_error(a, "nbd-server-start",
                       {"addr": {"type": "inet", "host": "0.0.0.0", "port": "10809"}},
                       "GenericError", "NBD server already running")
    await expect_error(a, "block-export-add", dict(export, type="fuse", mountpoint="/m"),
                       "GenericError", None)
    await expect_error(a, "block-export-add", dict(export, **{"node-name": "Nope"}),
                       "GenericError", "Cannot find device='' nor node-name='Nope'")
    await expect_error(a, "nbd-server-add", {"device": "Nope"},
                       "DeviceNotFound", "Device 'Nope' not found")
    await a.execute("block-export-add", export)
    await expect_error(a, "block-export-add", export, "GenericError",
                       "Block export id 'e0' is already in use")
    exports = await b.execute("query-block-exports")
    check({"id": "e0", "type": "nbd", "node-name": "VirtioBlk0", "shutting-down": False}
          in exports, f"query-block-exports {exports}")

    # Real clients on the export.
    info = run("nbdinfo", "--json", nbd("vd"))
    j = json.loads(info)
    check(j["exports"][0]["export-size"] == 64 * MIB, "nbdinfo size")
    check(j["exports"][0].get("description") == "virtio disk", "nbdinfo description")
    check("64 MiB" in run("qemu-img", "info", "-f", "raw", nbd("vd")), "qemu-img info")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", nbd("vd"))
    copy = os.path.join(SCRATCH, "vd.img")
    run("nbdcopy", nbd("vd"), copy)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", copy, nbd("vd"))

    # A read-only export (writable defaults to false).
    await a.execute("block-export-add", {"type": "nbd", "id": "ro", "node-name": "Nvme0n1",
                                         "name": "nv"})
    p = subprocess.run(["qemu-io", "-f", "raw", "-c", "write 0 4k", nbd("nv")],
                       capture_output=True, text=True, timeout=60)
    check(p.returncode != 0 or "failed" in p.stdout + p.stderr, "not writable by default")

    # Safe removal with a client attached fails; hard removal drops it and
    # every monitor hears of it.
    client = subprocess.Popen(["qemu-io", "-f", "raw", nbd("vd")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client.stdin.write("read -P 0x5a 1M 4k\n")
    client.stdin.flush()
    await asyncio.sleep(3)
    await expect_error(a, "block-export-del", {"id": "e0"}, "GenericError",
                       "export 'e0' still in use")
    await expect_error(a, "block-export-del", {"id": "nope"}, "GenericError",
                       "Export 'nope' is not found")
    await a.execute("block-export-del", {"id": "e0", "mode": "hard"})
    for q in (a, b):
        ev = await asyncio.wait_for(q.events.get(), 20)
        check(ev["event"] == "BLOCK_EXPORT_DELETED" and ev["data"] == {"id": "e0"}
              and "seconds" in ev["timestamp"], f"{q.name} got {ev['event']}")
    raw_ev = raw.recv()
    check(raw_ev.get("event") == "BLOCK_EXPORT_DELETED", "the raw monitor too")
    exports = await a.execute("query-block-exports")
    check(all(e["id"] != "e0" for e in exports), "e0 gone")
    client.stdin.write("read -P 0x5a 1M 4k\n")
    client.stdin.close()
    out = client.stdout.read()
    client.wait(timeout=30)
    check("failed" in out or "error" in out.lower(), f"the dropped client's next read fails")

    # The deprecated pair.
    await a.execute("nbd-server-add", {"device": "VirtioBlk0", "name": "old"})
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", copy, nbd("old"))
    await a.execute("nbd-server-remove", {"name": "old"})
    ev = await asyncio.wait_for(a.events.get(), 20)
    check(ev["data"] == {"id": "old"}, "nbd-server-remove's event")
    await b.execute("nbd-server-stop")
    check(await a.execute("query-block-exports") == [], "nbd-server-stop closes the exports")

    # max-connections: one client at a time.
    await a.execute("nbd-server-start", {"addr": {"type": "inet", "host": "10.0.3.15",
                                                  "port": "10809"}, "max-connections": 1})
    await a.execute("block-export-add", {"type": "nbd", "id": "one", "node-name": "VirtioBlk0"})
    holder = subprocess.Popen(["qemu-io", "-f", "raw", "-r", nbd("VirtioBlk0")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    holder.stdin.write("read 0 4k\n")
    holder.stdin.flush()
    await asyncio.sleep(3)
    p = subprocess.run(["nbdinfo", nbd("VirtioBlk0")], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode != 0, "a second client is turned away at max-connections 1")
    holder.stdin.close()
    holder.wait(timeout=30)
    await asyncio.sleep(2)
    run("nbdinfo", nbd("VirtioBlk0"))
    await a.execute("nbd-server-stop")
    await backup(a)
    await a.disconnect()
    await b.disconnect()
    print("qmp-client: all passed", flush=True)


async def deleted(q, export_id):
    """Waits for BLOCK_EXPORT_DELETED of `export_id` (skipping others)."""
    while True:
        ev = await asyncio.wait_for(q.events.get(), 20)
        if ev["event"] == "BLOCK_EXPORT_DELETED" and ev["data"] == {"id": export_id}:
            return


async def backup(a):
    """Incremental backup of an lvol with a dirty bitmap."""
    cluster = MIB
    rpc("bdev_lvol_create_lvstore", {"bdev_name": "Nvme0n1", "lvs_name": "lvs0",
                                     "cluster_sz": cluster})
    vol = rpc("bdev_lvol_create", {"lvol_name": "vol0", "size_in_mib": 16,
                                   "lvs_name": "lvs0", "thin_provision": True})
    await a.execute("nbd-server-start", {"addr": {"type": "inet", "host": "0.0.0.0",
                                                  "port": "10809"}})
    # Some data before tracking starts.
    await a.execute("block-export-add", {"type": "nbd", "id": "w", "node-name": vol,
                                         "name": "vol-w", "writable": True})
    run("qemu-io", "-f", "raw", "-c", "write -P 0x11 0 6M", "-c", "write -P 0x12 8M 2M",
        nbd("vol-w"))
    await a.execute("block-dirty-bitmap-add", {"node": vol, "name": "b0"})
    await expect_error(a, "block-dirty-bitmap-add", {"node": vol, "name": "b0"},
                       "GenericError", "Bitmap already exists: b0")
    await expect_error(a, "block-dirty-bitmap-add", {"node": "nope", "name": "b1"},
                       "GenericError", "Cannot find device='nope' nor node-name='nope'")
    await expect_error(a, "block-dirty-bitmap-add",
                       {"node": vol, "name": "b1", "granularity": 1000},
                       "GenericError", None)
    await a.execute("block-dirty-bitmap-add", {"node": "VirtioBlk0", "name": "v0",
                                               "disabled": True})
    nodes = {n["node-name"]: n for n in await a.execute("query-named-block-nodes")}
    b0 = nodes[vol]["dirty-bitmaps"][0]
    check(b0["name"] == "b0" and b0["granularity"] == cluster and b0["recording"]
          and b0["count"] == 0, f"b0 on the lvol has the cluster granularity: {b0}")
    v0 = nodes["VirtioBlk0"]["dirty-bitmaps"][0]
    check(v0["granularity"] == 65536 and not v0["recording"], f"v0: {v0}")

    # The full copy.
    full = os.path.join(SCRATCH, "full.img")
    run("nbdcopy", nbd("vol-w"), full)
    # Writes from a client: two small ones, one spanning clusters.
    run("qemu-io", "-f", "raw", "-c", "write -P 0x21 3M 4k",
        "-c", "write -P 0x22 9M 64k", "-c", "write -P 0x23 12286k 8k", nbd("vol-w"))
    await a.execute("block-export-del", {"id": "w"})
    await deleted(a, "w")
    nodes = {n["node-name"]: n for n in await a.execute("query-named-block-nodes")}
    check(nodes[vol]["dirty-bitmaps"][0]["count"] == 4 * cluster,
          f"4 clusters dirty: {nodes[vol]['dirty-bitmaps']}")

    # Snapshot, export it with the volume's bitmap, copy only what changed.
    snap = rpc("bdev_lvol_snapshot", {"lvol_name": vol, "snapshot_name": "snap1"})
    await a.execute("block-export-add", {"type": "nbd", "id": "inc", "node-name": snap,
                                         "name": "inc",
                                         "bitmaps": [{"node": vol, "name": "b0"}]})
    await expect_error(a, "block-dirty-bitmap-remove", {"node": vol, "name": "b0"},
                       "GenericError", None)
    runs = nbd_map(nbd("inc"), "qemu:dirty-bitmap:b0")
    dirty = [(o, n) for o, n, f in runs if f & 1]
    check(dirty == [(3 * MIB, MIB), (9 * MIB, MIB), (11 * MIB, 2 * MIB)],
          f"exactly the written clusters are dirty: {runs}")
    with open(full, "r+b") as f:
        for k, (off, n) in enumerate(dirty):
            piece = os.path.join(SCRATCH, f"piece{k}.img")
            # qemu-img dd counts the skipped blocks in `count`.
            run("qemu-img", "dd", "-f", "raw", "-O", "raw", f"bs={cluster}",
                f"skip={off // cluster}", f"count={(off + n) // cluster}",
                f"if={nbd('inc')}", f"of={piece}")
            with open(piece, "rb") as p:
                data = p.read()
            check(len(data) == n, f"extent {k}: {len(data)} bytes read")
            f.seek(off)
            f.write(data)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", full, nbd("inc"))
    print("ok: the full copy plus the dirty extents is the snapshot, byte for byte")
    await a.execute("block-export-del", {"id": "inc"})
    await deleted(a, "inc")
    await a.execute("block-dirty-bitmap-clear", {"node": vol, "name": "b0"})
    await a.execute("block-dirty-bitmap-merge", {"node": vol, "target": "b0",
                                                 "bitmaps": [{"node": "VirtioBlk0",
                                                              "name": "v0"}]})
    nodes = {n["node-name"]: n for n in await a.execute("query-named-block-nodes")}
    check(nodes[vol]["dirty-bitmaps"][0]["count"] == 0, "cleared")
    await a.execute("block-dirty-bitmap-remove", {"node": "VirtioBlk0", "name": "v0"})
    await expect_error(a, "block-dirty-bitmap-clear", {"node": "VirtioBlk0", "name": "v0"},
                       "GenericError", "Dirty bitmap 'v0' not found")

    # allocation-depth on a clone: its own data, the snapshot's, nothing.
    clone = rpc("bdev_lvol_clone", {"snapshot_name": snap, "clone_name": "clone1"})
    await a.execute("block-export-add", {"type": "nbd", "id": "c", "node-name": clone,
                                         "name": "clone", "writable": True,
                                         "allocation-depth": True})
    run("qemu-io", "-f", "raw", "-c", "write -P 0x31 1M 4k", nbd("clone"))
    runs = nbd_map(nbd("clone"), "qemu:allocation-depth")
    depth = {}
    for o, n, d in runs:
        for c in range(o // MIB, (o + n) // MIB):
            depth[c] = d
    check(depth[1] == 1 and depth[0] == 2 and depth[8] == 2 and depth[6] == 0
          and depth[15] == 0, f"allocation depth: {runs}")
    base = nbd_map(nbd("clone"), "base:allocation")
    check(len(base) > 0, "base:allocation beside it")
    await a.execute("block-export-del", {"id": "c"})
    await deleted(a, "c")
    print("qmp-client: incremental backup passed", flush=True)


asyncio.run(main())
