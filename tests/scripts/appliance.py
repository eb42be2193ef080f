"""What the QMP test scripts share: checks that print as they go, JSON-RPC
calls, tools run as subprocesses, and NBD addresses and maps, all against
the booted appliance's forwarded ports (QMP_PORT, NBD_PORT, RPC_PORT)."""

import json
import os
import socket
import subprocess
import sys

QMP = int(os.environ["QMP_PORT"])
NBD = int(os.environ["NBD_PORT"])
RPC = int(os.environ["RPC_PORT"])


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def rpc(method, params=None):
    """One JSON-RPC call; its result (a failure ends the script)."""
    s = socket.create_connection(("127.0.0.1", RPC), timeout=60)
    req = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        req["params"] = params
    s.sendall(json.dumps(req).encode())
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            check(False, f"{method}: no answer")
        buf += d
        try:
            r = json.loads(buf)
            break
        except ValueError:
            pass
    if "result" not in r:
        check(False, f"{method} {params}: {r}")
    return r["result"]


def run(*cmd):
    """Runs a tool; its standard output (a failure ends the script)."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        print(p.stdout, p.stderr)
    check(p.returncode == 0, " ".join(cmd))
    return p.stdout


def nbd(name):
    return f"nbd://127.0.0.1:{NBD}/{name}"


def nbd_map(uri, context):
    """nbdinfo --map: [(offset, length, flags)]."""
    out = run("nbdinfo", f"--map={context}", uri)
    runs = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0].isdigit():
            runs.append((int(f[0]), int(f[1]), int(f[2])))
    return runs
