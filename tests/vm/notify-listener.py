#!/usr/bin/python3
"""Run a command the way systemd runs a Type=notify service, and record what it notifies.

    notify-listener.py LOGFILE -- COMMAND [ARGS...]

Binds a Unix datagram socket, starts COMMAND with NOTIFY_SOCKET pointing at it (the rest of the
environment is inherited, so the caller sets WATCHDOG_USEC etc.), and appends one line per event
to LOGFILE, flushed at once so a shell can poll it:

    MAINPID=<pid>                               once, after the start
    MSG t=<secs> pid=<sender pid> <A=1|B=2>     one per datagram; assignments joined with '|'
    EXIT=<code>                                 when COMMAND exits (-N: killed by signal N)

The sender pid comes from SCM_CREDENTIALS, as systemd checks it for NotifyAccess=main.
Exits with COMMAND's exit code (128+N for a signal). Stdlib only: run it with Debian's
/usr/bin/python3.
"""
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    logfile, cmd = sys.argv[1], sys.argv[3:]
    sockdir = tempfile.mkdtemp(prefix="notify-", dir="/run")
    path = os.path.join(sockdir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    os.chmod(path, 0o777)  # the service may drop privileges, as under systemd

    log = open(logfile, "a", buffering=1)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, env=env)
    log.write(f"MAINPID={child.pid}\n")

    ucred = struct.Struct("iII")  # pid, uid, gid
    def drain(timeout: float) -> None:
        while select.select([sock], [], [], timeout)[0]:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(ucred.size))
            pid = -1
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = ucred.unpack(payload[: ucred.size])[0]
            text = "|".join(data.decode("utf-8", "replace").strip("\n").split("\n"))
            log.write(f"MSG t={time.monotonic() - t0:.3f} pid={pid} {text}\n")
            timeout = 0

    while child.poll() is None:
        drain(0.2)
    drain(0)  # what was sent just before the exit
    rc = child.returncode
    log.write(f"EXIT={rc}\n")
    sock.close()
    os.unlink(path)
    os.rmdir(sockdir)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
