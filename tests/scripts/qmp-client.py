#!/usr/bin/env python3
"""QMP against the booted appliance with QEMU's own library (qemu.qmp) and,
for what the library hides, a raw socket: greeting and negotiation, each
block command and error class, events on every monitor, and an NBD export
made over QMP used by nbdinfo, qemu-img, qemu-io and nbdcopy. Also QEMU's
qmp-shell, fed commands as an administrator types them: key=value with JSON
and Python literals, a bitmap and an export read by nbdinfo, errors, the
event, all removed again. Last, idle monitors on every socket do not lock
out a newcomer.

Then incremental backup of a logical volume: a dirty bitmap, a full copy,
writes, a snapshot exported with the bitmap as qemu:dirty-bitmap:b0, only
the dirty extents copied (nbdinfo --map), the copy compared byte for byte;
and qemu:allocation-depth on a clone.

Environment: QMP_PORT (forwarded to 4444), NBD_PORT (forwarded to 10809),
RPC_PORT (JSON-RPC, for the volumes), SCRATCH (a directory for files).
"""

import ast
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys

from qemu.qmp import ExecuteError, QMPClient

from appliance import NBD, QMP, check, nbd, nbd_map, rpc, run

SCRATCH = os.environ["SCRATCH"]
MIB = 1 << 20


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


def qmp_shell(lines, *opts):
    """Feeds `lines` to qmp-shell: its banner and what each line printed."""
    # pip may put the entry point off PATH; the module is the same program.
    exe = shutil.which("qmp-shell")
    cmd = [exe] if exe else [sys.executable, "-m", "qemu.qmp.qmp_shell"]
    # The shell writes its history to $HOME: keep it out of the real one.
    p = subprocess.run(cmd + [*opts, f"127.0.0.1:{QMP}"], input="".join(f"{l}\n" for l in lines),
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HOME=SCRATCH))
    # Without a terminal it still prompts, unterminated, before each line and
    # once more at the end of input.
    banner, *outs = p.stdout.split("(QEMU) ")
    if p.returncode != 0 or p.stderr or len(outs) != len(lines) + 1:
        print(p.stdout, p.stderr)
    check(p.returncode == 0 and p.stderr == "", " ".join(["qmp-shell", *opts]))
    check(len(outs) == len(lines) + 1, "a prompt per line")
    return banner, outs[:-1]


def shown(out):
    """The JSON qmp-shell printed for a command: with -v what it sent, then the reply."""
    msgs, rest = [], out.strip()
    while rest:
        m, end = json.JSONDecoder().raw_decode(rest)
        msgs.append(m)
        rest = rest[end:].lstrip()
    return msgs


async def shell(raw, a, b):
    """qmp-shell against the appliance, its NBD server running; leaves
    nothing behind, and every monitor's events read."""
    node = "VirtioBlk0"
    lines = [
        "query-version",
        "query-commands",
        f"block-dirty-bitmap-add node={node} name=shellbm",
        "query-named-block-nodes",
        f"block-export-add type=nbd id=shell0 node-name={node} name=shell0 writable=false"
        f" bitmaps=[{{'node':'{node}','name':'shellbm'}}]",
        "query-block-exports",
        f"block-dirty-bitmap-remove node={node} name=shellbm",
        "block-export-del id=nosuch",
        "no-such-command",
        # The address as QEMU's nbd-server-start takes it, the legacy shape.
        'nbd-server-start addr={"type":"inet","data":{"host":"0.0.0.0","port":"10809"}}',
    ]
    banner, outs = qmp_shell(lines, "-p", "-v")
    sent = [shown(o) for o in outs]
    check(all(len(m) == 2 and m[0]["execute"] == l.split()[0] for m, l in zip(sent, lines)),
          "qmp-shell -v echoes each command before its reply")
    ver, cmds, add, nodes, export, exports, busy, nosuch, unknown, start = (m[1] for m in sent)
    q = ver["return"]["qemu"]
    version = f"{q['major']}.{q['minor']}.{q['micro']}"
    check(f"Connected to QEMU {version}" in banner, f"qmp-shell banner, query-version {version}")
    names = {c["name"] for c in cmds["return"]}
    check({"block-export-add", "block-export-del", "query-block-exports",
           "block-dirty-bitmap-add", "block-dirty-bitmap-remove"} <= names,
          "qmp-shell: query-commands")
    check(add == {"return": {}}, f"qmp-shell: block-dirty-bitmap-add {add}")
    bitmaps = [n["dirty-bitmaps"] for n in nodes["return"] if n["node-name"] == node]
    check(bitmaps == [[{"name": "shellbm", "granularity": 65536, "count": 0, "recording": True,
                        "busy": False, "persistent": False}]],
          f"qmp-shell: query-named-block-nodes shows shellbm on {node}: {bitmaps}")
    check(export == {"return": {}}, f"qmp-shell: block-export-add {export}")
    check({"id": "shell0", "type": "nbd", "node-name": node, "shutting-down": False}
          in exports["return"], f"qmp-shell: query-block-exports {exports}")
    check(busy == {"error": {"class": "GenericError", "desc": "Bitmap 'shellbm' is currently in "
                             "use by another operation and cannot be used"}},
          f"qmp-shell: an exported bitmap stays: {busy}")
    check(nosuch == {"error": {"class": "GenericError", "desc": "Export 'nosuch' is not found"}},
          f"qmp-shell: {nosuch}")
    check(unknown == {"error": {"class": "CommandNotFound",
                                "desc": "The command no-such-command has not been found"}},
          f"qmp-shell: {unknown}")
    check(start == {"error": {"class": "GenericError", "desc": "NBD server already running"}},
          f"qmp-shell: {start}")

    info = json.loads(run("nbdinfo", "--json", nbd("shell0")))["exports"][0]
    check(info["export-size"] == 64 * MIB and info["is_read_only"], "nbdinfo on shell0")
    check(nbd_map(nbd("shell0"), "qemu:dirty-bitmap:shellbm") == [(0, 64 * MIB, 0)],
          "shellbm exported, all clean")

    lines = [
        "block-export-del id=shell0",
        # The shell shows events on an empty line, and only those a command
        # has already read in.
        "query-block-exports",
        "",
        f"block-dirty-bitmap-remove node={node} name=shellbm",
        "query-named-block-nodes",
    ]
    _, outs = qmp_shell(lines)
    # Events come as Python dicts, replies as JSON.
    events = [ast.literal_eval(l) for l in outs.pop(2).splitlines() if l.strip()]
    (dele,), (exports,), (rm,), (nodes,) = (shown(o) for o in outs)
    check(dele == {"return": {}}, f"qmp-shell: block-export-del {dele}")
    check(all(e["id"] != "shell0" for e in exports["return"]), f"shell0 gone: {exports}")
    check([(e["event"], e["data"]) for e in events]
          == [("BLOCK_EXPORT_DELETED", {"id": "shell0"})], f"qmp-shell shows the event {events}")
    check(rm == {"return": {}}, f"qmp-shell: block-dirty-bitmap-remove {rm}")
    # QEMU leaves out an empty list.
    check(all(n.get("dirty-bitmaps", []) == [] for n in nodes["return"]
              if n["node-name"] == node), f"shellbm gone from {node}")
    ev = raw.recv()
    check(ev.get("event") == "BLOCK_EXPORT_DELETED" and ev["data"] == {"id": "shell0"},
          "the raw monitor heard of shell0 too")
    for q in (a, b):
        ev = await asyncio.wait_for(q.events.get(), 20)
        check(ev["event"] == "BLOCK_EXPORT_DELETED" and ev["data"] == {"id": "shell0"},
              f"{q.name} heard of shell0 too")


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
    # While the server runs: stopping it would close the appliance's own exports too.
    await shell(raw, a, b)
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
    await crowd()
    print("qmp-client: all passed", flush=True)


async def crowd():
    """Monitors that negotiate, then sit idle on every socket QMP has, do
    not lock an administrator out: the quietest is dropped for a newcomer."""
    idle, full = [], False
    for _ in range(12):
        try:
            s = socket.create_connection(("127.0.0.1", QMP), timeout=5)
            full = b'"QMP"' not in s.recv(4096)
            if full:
                break
            s.sendall(b'{"execute": "qmp_capabilities"}')
            s.recv(4096)
            idle.append(s)
        except OSError:
            full = True
            break
    check(full and len(idle) >= 6, f"{len(idle)} idle monitors hold every socket")
    q = QMPClient("admin")
    for _ in range(60):
        try:
            await asyncio.wait_for(q.connect(("127.0.0.1", QMP)), 5)
            break
        except Exception:
            await asyncio.sleep(1)
            q = QMPClient("admin")
    v = await q.execute("query-version")
    check("qemu" in v, "a newcomer is served while idle monitors held every socket")
    await q.disconnect()
    for s in idle:
        s.close()


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
