#!/usr/bin/env python3
"""QMP against the booted appliance with QEMU's own library (qemu.qmp) and,
for what the library hides, a raw socket: greeting and negotiation, each
block command and error class, events on every monitor, and an NBD export
made over QMP used by nbdinfo, qemu-img, qemu-io and nbdcopy.

Environment: QMP_PORT (forwarded to 4444), NBD_PORT (forwarded to 10809),
SCRATCH (a directory for files).
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
    await a.disconnect()
    await b.disconnect()
    print("qmp-client: all passed", flush=True)


asyncio.run(main())
