#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# snapsave --qmp refusals against a scripted QMP monitor (no QEMU needed): a
# QEMU without x-ignore-shared, a migration already running, a backend that is
# not a shared file (share=off, plain -m), a memfd on QEMU 7.2 that cannot be
# found among the peer's descriptors or is ambiguous, a peer that is
# not a QMP monitor; each exits 1 with one line, before any `stop`, with no
# file. A failing `stop` puts back the capabilities and max-bandwidth it
# changed. Usage errors of --qmp, --resume, --quit, --paused exit 2.

import json
import os
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from snaptest import *  # noqa: E402,F401,F403

failures = []


def expect(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


class FakeQMP:
    """One-client QMP monitor on a UNIX socket answering from `replies`
    (command -> return value, or a callable(args) -> ("return"|"error", v))."""

    def __init__(self, path, replies, version=(10, 0, 2), greeting=None):
        self.path, self.replies, self.log = path, replies, []
        self.version, self.greeting = version, greeting
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        c, _ = self.srv.accept()
        f = c.makefile("rwb")
        if self.greeting is not None:
            f.write(self.greeting)
            f.flush()
            c.close()
            return
        ma, mi, mc = self.version
        f.write(json.dumps({"QMP": {"version": {"qemu": {"major": ma, "minor": mi,
                                                          "micro": mc}, "package": ""},
                                    "capabilities": []}}).encode() + b"\r\n")
        f.flush()
        for line in f:
            m = json.loads(line)
            cmd, args = m["execute"], m.get("arguments", {})
            self.log.append((cmd, args))
            r = self.replies.get(cmd, {})
            kind, val = r(args) if callable(r) else ("return", r)
            out = {kind: val, "id": m.get("id")}
            if kind == "error":
                out = {"error": {"class": "GenericError", "desc": val}, "id": m.get("id")}
            f.write(json.dumps(out).encode() + b"\r\n")
            f.flush()
        c.close()

    def close(self):
        self.srv.close()
        self.t.join(5)
        os.unlink(self.path)

    def cmds(self):
        return [c for c, _ in self.log]


def replies(tmp, memdevs=None, caps=None, migrate=None, types=None, stop=None):
    ram = os.path.join(tmp, "ram0")
    with open(ram, "wb") as f:
        f.truncate(4 << 20)
    types = types or {"ram0": "memory-backend-file"}

    def qom_get(a):
        if a["path"] == "/machine":
            return "return", "pc-q35-10.0-machine"
        bid = a["path"].rsplit("/", 1)[1]
        return "return", types[bid] if a["property"] == "type" else ram
    r = {
        "qmp_capabilities": {},
        "query-status": {"status": "running", "running": True},
        "query-migrate": migrate or {},
        "query-migrate-capabilities": caps if caps is not None else [
            {"capability": "x-ignore-shared", "state": False},
            {"capability": "mapped-ram", "state": True}],
        "query-migrate-parameters": {"max-bandwidth": 134217728},
        "query-memdev": memdevs or [{"id": "ram0", "size": 4 << 20, "share": True,
                                     "merge": True, "dump": True, "prealloc": False,
                                     "host-nodes": [], "policy": "default"}],
        "qom-get": qom_get,
    }
    if stop:
        r["stop"] = stop
    return r


def save(sock, out, *extra):
    return subprocess.run([SNAPSAVE, "--qmp", sock, "-o", out, *extra], capture_output=True,
                          text=True, timeout=60)


def refused(tmp, name, want, version=(10, 0, 2), greeting=None, **kw):
    sock = os.path.join(tmp, name + ".sock")
    out = os.path.join(tmp, name + ".snap")
    q = FakeQMP(sock, replies(tmp, **kw), version=version, greeting=greeting)
    try:
        p = save(sock, out)
    finally:
        q.close()
    lines = p.stderr.strip().splitlines()
    expect(p.returncode == 1, f"{name}: rc {p.returncode}, expected 1: {p.stderr.strip()}")
    expect(len(lines) == 1 and want in p.stderr, f"{name}: expected one line with {want!r}: "
                                                 f"{p.stderr.strip()!r}")
    expect("stop" not in q.cmds(), f"{name}: the guest was paused: {q.cmds()}")
    expect("migrate-set-capabilities" not in q.cmds() or name == "stop-fails",
           f"{name}: capabilities changed before a refusal: {q.cmds()}")
    expect(not os.path.exists(out), f"{name}: {out} exists")
    return q


def main():
    tmp = scratch("disk")
    md = {"id": "ram0", "size": 4 << 20, "merge": True, "dump": True, "prealloc": False,
          "host-nodes": [], "policy": "default"}
    refused(tmp, "no-cap", "no x-ignore-shared",
            caps=[{"capability": "mapped-ram", "state": False}])
    refused(tmp, "active", "already running", migrate={"status": "active"})
    refused(tmp, "share-off", "share=off", memdevs=[dict(md, share=False)])
    refused(tmp, "plain-m", "'pc.ram' (memory-backend-ram",
            memdevs=[dict(md, id="pc.ram", share=False)], types={"pc.ram": "memory-backend-ram"})
    # 7.2 + memfd is read through the peer's /proc/PID/fd: this peer (the
    # test) holds no memfd of that size, and two memfds of one size are
    # ambiguous.
    refused(tmp, "memfd-7.2", "no memfd of 4194304 bytes", version=(7, 2, 22),
            memdevs=[dict(md, share=True)], types={"ram0": "memory-backend-memfd"})
    refused(tmp, "memfd-7.2-twins", "same size", version=(7, 2, 22),
            memdevs=[dict(md, share=True), dict(md, id="ram1", share=True)],
            types={"ram0": "memory-backend-memfd", "ram1": "memory-backend-memfd"})
    refused(tmp, "not-qmp", "not a QMP monitor", greeting=b"SSH-2.0-OpenSSH\r\n")

    # stop fails after the capabilities were set: they and max-bandwidth come back.
    sock = os.path.join(tmp, "stop.sock")
    q = FakeQMP(sock, replies(tmp, stop=lambda a: ("error", "no")))
    try:
        p = save(sock, os.path.join(tmp, "stop.snap"))
    finally:
        q.close()
    sets = [(c, a) for c, a in q.log if c.startswith("migrate-set-")]
    caps = [(x["capability"], x["state"]) for c, a in sets if c.endswith("capabilities")
            for x in a["capabilities"]]
    bws = [a["max-bandwidth"] for c, a in sets if c.endswith("parameters")]
    expect(p.returncode == 1 and "stop" in p.stderr, f"stop fails: {p.stderr.strip()}")
    expect(caps == [("x-ignore-shared", True), ("mapped-ram", False), ("mapped-ram", True),
                    ("x-ignore-shared", False)], f"stop fails: capabilities {caps}")
    expect(len(bws) == 2 and bws[1] == 134217728, f"stop fails: max-bandwidth {bws}")

    # Usage errors (exit 2).
    for args in (["-o", "x", "--resume"], ["-o", "x", "--qmp", "s", "--resume", "--quit"],
                 ["-o", "x", "--qmp", "s", "--ram", "a=b"], ["--qmp", "s"],
                 ["-o", "fd:3", "--qmp", "s"]):
        p = subprocess.run([SNAPSAVE, *args], capture_output=True, text=True)
        expect(p.returncode == 2, f"snapsave {args}: rc {p.returncode}: {p.stderr.strip()}")
    for args in (["f", "--paused"], ["f", "--qmp", "s", "--ram", "a=b"],
                 ["f", "--qmp", "s", "--info"]):
        p = subprocess.run([SNAPRESTORE, *args], capture_output=True, text=True)
        expect(p.returncode == 2, f"snaprestore {args}: rc {p.returncode}: {p.stderr.strip()}")
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
