#!/usr/bin/env python3
"""The targetd API of a booted appliance, driven as targetd's own client
drives it: Python requests, HTTP Basic auth, a JSON-RPC 2.0 body per POST.

Environment: TARGETD_URL (http://127.0.0.1:PORT/targetrpc), TARGETD_USER,
TARGETD_PASSWORD, TARGETD_POOL (a volume store the appliance has).
Exits non-zero with a message on the first check that fails."""

import json
import os
import socket
import sys
import threading
import time
import urllib.parse

import requests

URL = os.environ["TARGETD_URL"]
AUTH = (os.environ["TARGETD_USER"], os.environ["TARGETD_PASSWORD"])
POOL = os.environ["TARGETD_POOL"]
HOST = urllib.parse.urlparse(URL).hostname
PORT = urllib.parse.urlparse(URL).port
MIB = 1 << 20
ids = iter(range(1, 1 << 30))


def check(cond, what):
    if not cond:
        sys.exit(f"targetd-api: FAILED: {what}")
    print(f"ok: {what}", flush=True)


def post(body, auth=AUTH, **kw):
    return requests.post(URL, data=body, auth=auth, timeout=30, **kw)


def call(method, params=None):
    """(result, None) or (None, code)."""
    i = next(ids)
    r = post(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}))
    if r.status_code != 200:
        sys.exit(f"targetd-api: {method}: HTTP {r.status_code}: {r.text}")
    v = r.json()
    if v.get("jsonrpc") != "2.0" or v.get("id") != i:
        sys.exit(f"targetd-api: {method}: bad envelope {v}")
    if "error" in v:
        return None, v["error"]["code"]
    return v["result"], None


def code(method, params=None):
    return call(method, params)[1]


def ok(method, params=None):
    res, err = call(method, params)
    if err is not None:
        sys.exit(f"targetd-api: {method} {params}: error {err}")
    return res


def vols():
    return {v["name"]: v for v in ok("vol_list", {"pool": POOL})}


def raw(data, read=True):
    s = socket.create_connection((HOST, PORT), timeout=10)
    s.sendall(data)
    if not read:
        return s
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                n = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                if n and len(body) >= int(n[0].split(b":")[1]):
                    break
    except socket.timeout:
        pass
    s.close()
    return out


# --- authentication ------------------------------------------------------
body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "pool_list"})
check(post(body).status_code == 200, "right credentials: 200")
for bad in [("admin-x", AUTH[1]), (AUTH[0], AUTH[1] + "x")]:
    t = time.time()
    r = post(body, auth=bad)
    took = time.time() - t
    check(r.status_code == 401 and took >= 2.0, f"wrong {'user' if bad[0] != AUTH[0] else 'password'}: 401 after {took:.2f} s")
r = requests.post(URL, data=body, timeout=30)
check(r.status_code == 401 and "Basic" in r.headers.get("WWW-Authenticate", ""), "no credentials: 401 with a Basic challenge")

# A guess pending: other clients are served meanwhile (behind QEMU's NAT they
# share the guesser's address), a second guess from it gets 503 at once.
res = {}


def guess(k):
    t = time.time()
    res[k] = (post(body, auth=("admin", "guess")).status_code, time.time() - t)


g = threading.Thread(target=guess, args=("first",))
g.start()
time.sleep(0.5)
t = time.time()
r = post(body)
served = time.time() - t
check(r.status_code == 200 and served < 1.5, f"served during a pending guess ({served:.2f} s)")
guess("second")
check(res["second"][0] == 503 and res["second"][1] < 1.5, f"second guess meanwhile: {res['second']}")
g.join()
check(res["first"][0] == 401 and res["first"][1] >= 2.0, f"first guess: {res['first']}")
time.sleep(0.1)
# Four guesses at once from one address: each 401 or 503.
codes = []
threads = [threading.Thread(target=lambda: codes.append(post(body, auth=("x", "y")).status_code)) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
check(sorted(set(codes)) in ([401], [401, 503], [503]) and 401 in codes, f"concurrent guesses: {codes}")

# --- HTTP -----------------------------------------------------------------
check(requests.post(URL.replace("/targetrpc", "/nope"), data=body, auth=AUTH, timeout=30).status_code == 404, "other path: 404")
check(requests.get(URL, auth=AUTH, timeout=30).status_code == 405, "GET: 405")
big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "x" * (128 * 1024)})
try:
    st = post(big).status_code
except requests.exceptions.ConnectionError:
    st = 413  # the server may close before the client finished sending
check(st == 413, f"body over 128 KiB: {st}")
check(raw(b"POST /targetrpc HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 411"), "no Content-Length: 411")
hdr = b"POST /targetrpc HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
check(raw(hdr).startswith(b"HTTP/1.1 431"), "head over 8 KiB: 431")
check(raw(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n").startswith(b"HTTP/1.1 400"), "TLS hello or garbage: 400")
# A client that stalls mid-request holds up no one.
stalled = [raw(b"POST /targetrpc HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", read=False) for _ in range(2)]
t = time.time()
check(post(body).status_code == 200 and time.time() - t < 2, "served while two clients stall mid-request")
for s in stalled:
    s.close()
time.sleep(0.5)
# Keep-alive: several calls on one connection.
with requests.Session() as sess:
    sess.auth = AUTH
    for _ in range(5):
        check(sess.post(URL, data=body, timeout=30).status_code == 200, "keep-alive call")

# --- JSON-RPC envelope -----------------------------------------------------
r = post('{"jsonrpc":"2.0","id":1,"method":"pool_list"')
check(r.status_code == 200 and r.json()["error"]["code"] == -32700, "malformed JSON: -32700")
check(post(json.dumps({"jsonrpc": "not_a_version", "id": 1, "method": "pool_list"})).json()["error"]["code"] == -32600, "bad version: -32600")
check(code("pool_listing") == -32601, "unknown method: -32601")
check(code("pool_list", {"foo": "bar"}) == -32602, "unknown argument: -32602")
check(post(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "pool_list"}])).json()["error"]["code"] == -1, "batch: -1")

# --- pools and volumes -----------------------------------------------------
pools = ok("pool_list")
mine = [p for p in pools if p["name"] == POOL]
check(len(mine) == 1 and mine[0]["type"] == "block" and 0 < mine[0]["free_size"] <= mine[0]["size"] and "uuid" in mine[0], f"pool_list: {pools}")
check(ok("vol_create", {"pool": POOL, "name": "vol1", "size": 100 * MIB}) is None, "vol_create")
check(vols()["vol1"]["size"] == 100 * MIB, "vol_list size")
check(code("vol_create", {"pool": POOL, "name": "vol1", "size": MIB}) == -50, "name conflict: -50")
check(code("vol_create", {"pool": "no_such_pool_", "name": "v", "size": MIB}) == -110, "no such pool: -110")
check(code("vol_list", {"pool": "no_such_pool_"}) == -110, "vol_list no such pool: -110")
check(ok("vol_copy", {"pool": POOL, "vol_orig": "vol1", "vol_new": "vol1-copy", "size": None}) is None, "vol_copy")
check(vols()["vol1-copy"]["size"] == 100 * MIB and vols()["vol1-copy"]["uuid"] != vols()["vol1"]["uuid"], "copy listed with its own uuid")
check(ok("vol_copy", {"pool": POOL, "vol_orig": "vol1", "vol_new": "vol1-big", "size": 300 * MIB}) is None, "vol_copy larger")
check(vols()["vol1-big"]["size"] == 300 * MIB, "larger copy's size")
check(code("vol_copy", {"pool": POOL, "vol_orig": "nope", "vol_new": "x"}) == -103, "copy of a missing volume: -103")
check(code("vol_copy", {"pool": POOL, "vol_orig": "vol1", "vol_new": "x", "size": 100 * MIB}) == -32602, "copy to the same size: -32602")
check(code("vol_copy", {"pool": POOL, "vol_orig": "vol1", "vol_new": "x", "size": 50 * MIB / 1}) == -32602, "copy to a smaller size: -32602")
check(code("vol_copy", {"pool": POOL, "vol_orig": "vol1", "vol_new": "vol1-copy"}) == -50, "copy onto an existing name: -50")
check(ok("vol_resize", {"pool": POOL, "name": "vol1", "size": 300 * MIB}) is None, "vol_resize")
check(vols()["vol1"]["size"] == 300 * MIB, "resized size")
check(code("vol_resize", {"pool": POOL, "name": "vol1", "size": 300 * MIB}) == -32602, "resize to the same size: -32602")
check(code("vol_resize", {"pool": POOL, "name": "vol1", "size": 150 * MIB / 1}) == -32602, "shrink: -32602")
check(code("vol_resize", {"pool": POOL, "name": "nope", "size": 400 * MIB}) == -103, "resize a missing volume: -103")
check(code("vol_destroy", {"pool": POOL, "name": "nope"}) == -103, "destroy a missing volume: -103")
check(code("vol_destroy", {"pool": "no_such_pool_", "name": "vol1"}) == -110, "destroy in a missing pool: -110")
for m in ["fs_list", "fs_create", "ss_list", "nfs_export_list", "nfs_export_add"]:
    res, err = call(m, None)
    check(err == -153, f"{m}: -153 (block storage only)")
# --- exports, initiators, access groups -------------------------------------
IA, IB = "iqn.1994-05.com.domain:01.apiaaa", "iqn.1994-05.com.domain:01.apibbb"
check(ok("export_list") == [], "no exports yet")
check(ok("export_create", {"pool": POOL, "vol": "vol1", "initiator_wwn": IA, "lun": 0}) is None, "export_create")
check(ok("export_create", {"pool": POOL, "vol": "vol1", "initiator_wwn": IA, "lun": 0}) is None, "export_create again: no change")
check(code("export_create", {"pool": POOL, "vol": "vol1-copy", "initiator_wwn": IA, "lun": 0}) == -1, "a LUN taken by another volume: -1")
check(code("export_create", {"pool": POOL, "vol": "vol1", "initiator_wwn": "not an iqn", "lun": 1}) == -1, "bad initiator name: -1")
check(code("export_create", {"pool": POOL, "vol": "nope", "initiator_wwn": IA, "lun": 1}) == -103, "export of a missing volume: -103")
check(code("export_create", {"pool": "no_such_pool_", "vol": "vol1", "initiator_wwn": IA, "lun": 1}) == -110, "export in a missing pool: -110")
ex = ok("export_list")
check(len(ex) == 1 and ex[0]["initiator_wwn"] == IA and ex[0]["lun"] == 0 and ex[0]["vol_name"] == "vol1"
      and ex[0]["pool"] == POOL and ex[0]["vol_size"] == 300 * MIB and ex[0]["vol_uuid"] == vols()["vol1"]["uuid"], f"export_list: {ex}")
check(code("vol_destroy", {"pool": POOL, "name": "vol1"}) == -303, "destroy an exported volume: -303")
check({"init_id": IA, "init_type": "iscsi"} in ok("initiator_list", {"standalone_only": "False"}), "initiator_list")
check(ok("initiator_set_auth", {"initiator_wwn": IA, "in_user": "u", "in_pass": "in-secret-1234", "out_user": "t", "out_pass": "out-secret-1234"}) is None, "initiator_set_auth mutual")
check(code("initiator_set_auth", {"initiator_wwn": IA, "in_user": "u"}) == -32602, "initiator_set_auth needs all five keys")
check(ok("initiator_set_auth", {"initiator_wwn": IA, "in_user": None, "in_pass": None, "out_user": None, "out_pass": None}) is None, "initiator_set_auth off")
check(ok("export_destroy", {"pool": POOL, "vol": "vol1", "initiator_wwn": IA}) is None, "export_destroy")
check(code("export_destroy", {"pool": POOL, "vol": "vol1", "initiator_wwn": IA}) == -151, "export_destroy again: -151")
check(all(i["init_id"] != IA for i in ok("initiator_list")), "the initiator went with its last export")
check(ok("access_group_create", {"ag_name": "grp1", "init_id": IA, "init_type": "iscsi"}) is None, "access_group_create")
check(code("access_group_create", {"ag_name": "grp1", "init_id": IB, "init_type": "iscsi"}) == -50, "group name taken: -50")
check(code("access_group_create", {"ag_name": "grp2", "init_id": IA, "init_type": "iscsi"}) == -52, "initiator in use: -52")
check(code("access_group_create", {"ag_name": "bad name", "init_id": IB, "init_type": "iscsi"}) == -32602, "bad group name: -32602")
check(code("access_group_create", {"ag_name": "grp3", "init_id": IB, "init_type": "fc"}) == -153, "non-iSCSI: -153")
check(ok("access_group_init_add", {"ag_name": "grp1", "init_id": IB, "init_type": "iscsi"}) is None, "access_group_init_add")
check(ok("access_group_list") == [{"name": "grp1", "init_ids": [IA, IB], "init_type": "iscsi"}], "access_group_list")
check(ok("access_group_map_create", {"pool_name": POOL, "vol_name": "vol1", "ag_name": "grp1"}) is None, "access_group_map_create")
check(code("access_group_map_create", {"pool_name": POOL, "vol_name": "vol1", "ag_name": "nope"}) == -200, "no such group: -200")
check(ok("access_group_map_list") == [{"ag_name": "grp1", "h_lun_id": 0, "pool_name": POOL, "vol_name": "vol1"}], "access_group_map_list")
check(len(ok("export_list")) == 2, "both members see the group's volume")
check(ok("initiator_list", {"standalone_only": True}) == [], "no standalone initiators")
check(ok("access_group_map_destroy", {"pool_name": POOL, "vol_name": "vol1", "ag_name": "grp1"}) is None, "access_group_map_destroy")
check(ok("access_group_init_del", {"ag_name": "grp1", "init_id": IB, "init_type": "iscsi"}) is None, "access_group_init_del")
check(ok("access_group_destroy", {"ag_name": "grp1"}) is None, "access_group_destroy")
check(ok("access_group_list") == [] and ok("export_list") == [], "nothing left")

for v in ["vol1-copy", "vol1-big"]:
    check(ok("vol_destroy", {"pool": POOL, "name": v}) is None, f"vol_destroy {v}")
check(set(vols()) == {"vol1"}, f"volumes left: {sorted(vols())}")
print("targetd-api: all checks passed")
