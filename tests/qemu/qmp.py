# SPDX-License-Identifier: MIT
# Minimal QMP client (stdlib only) for the QEMU interop tests: commands,
# events, and fd passing with SCM_RIGHTS for add-fd/getfd.

import json
import socket
import time


class QMPError(Exception):
    """A command answered with {"error": ...}; .cls and .desc hold its fields."""

    def __init__(self, cmd, cls, desc):
        super().__init__(f"{cmd}: {cls}: {desc}")
        self.cmd = cmd
        self.cls = cls
        self.desc = desc


class QMPTimeout(Exception):
    pass


class QMP:
    """One QMP connection over a UNIX socket.

    Events that arrive while waiting for a command's reply are queued, so
    wait_event() can find an event that raced ahead of the reply.
    """

    def __init__(self, path, timeout=30.0, alive=None):
        """Connects to `path`, retrying until it exists or `timeout` passes.

        `alive` is an optional callable; when it returns False the retry loop
        gives up early (QEMU died before creating its socket).
        """
        self.path = path
        self.events = []
        self._buf = b""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if alive is not None and not alive():
                    raise ConnectionError(f"QEMU exited before {path} appeared")
                if time.monotonic() > deadline:
                    raise QMPTimeout(f"no QMP socket at {path} after {timeout}s")
                time.sleep(0.05)
        self.sock = s
        greeting = self._recv(deadline)
        if "QMP" not in greeting:
            raise ConnectionError(f"unexpected QMP greeting: {greeting!r}")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities", timeout=timeout)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv(self, deadline):
        """Returns the next JSON message, blocking until `deadline`."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout("timed out waiting for QMP")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise QMPTimeout("timed out waiting for QMP") from None
            if not chunk:
                raise ConnectionError("QMP connection closed by QEMU")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        line = line.strip()
        if not line:
            return self._recv(deadline)
        return json.loads(line)

    def execute(self, cmd, args=None, fds=None, timeout=60.0):
        """Runs `cmd` and returns its "return" value; raises QMPError.

        `fds` are sent as SCM_RIGHTS ancillary data on the same message, as
        add-fd and getfd expect. The caller keeps ownership of them.
        """
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        data = json.dumps(msg).encode() + b"\n"
        self.sock.settimeout(timeout)
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            if sent != len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)
        deadline = time.monotonic() + timeout
        while True:
            resp = self._recv(deadline)
            if "event" in resp:
                self.events.append(resp)
                continue
            if "error" in resp:
                err = resp["error"]
                raise QMPError(cmd, err.get("class"), err.get("desc"))
            if "return" in resp:
                return resp["return"]

    def hmp(self, line, timeout=60.0):
        """Runs a human monitor command and returns its text output."""
        return self.execute("human-monitor-command", {"command-line": line},
                            timeout=timeout)

    def wait_event(self, name, match=None, timeout=60.0):
        """Returns the first (queued or new) event `name` whose data
        satisfies `match` (a callable), consuming it and earlier ones of that
        name. Raises QMPTimeout."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and (match is None or match(ev.get("data", {}))):
                    del self.events[: i + 1]
                    return ev
            self.events.append(self._recv(deadline))

    def wait_migration(self, timeout=300.0, poll=0.5):
        """Waits for migration to end; returns the final query-migrate reply.

        Uses MIGRATION events (needs the "events" capability) but also polls
        query-migrate, so a missed event cannot hang the caller. Raises
        RuntimeError with QEMU's error-desc if the migration failed.
        """
        final = ("completed", "failed", "cancelled")
        deadline = time.monotonic() + timeout
        while True:
            info = self.execute("query-migrate")
            if info.get("status") in final:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(f"migration still {info.get('status')} after {timeout}s")
            try:
                self.wait_event("MIGRATION", lambda d: d.get("status") in final,
                                timeout=min(poll, left))
            except QMPTimeout:
                pass
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: "
                               f"{info.get('error-desc', 'no error-desc')}")
        return info

