#!/usr/bin/python3
"""tests/vm/odirect-writer.py - what a VM does to its disk while its host's agent is hung.

Usage: odirect-writer.py DEVICE LABEL LOG STOPFILE

Opens DEVICE once with O_DIRECT (as QEMU keeps its disk open) and writes block 0 again and
again, 4 KiB holding "volfence-pattern-LABEL-N" for N = 1, 2, ..., every 20 ms, until STOPFILE
exists. Each attempt is one line of LOG, flushed: "<unix time> ok N" once the write returned,
or "<unix time> err N <errno> <message>". It goes on after errors: a refused write must stay
refused. The time is taken after the write returns, on the clock the agents log with.
"""
import mmap
import os
import sys
import time

dev, label, log_path, stop = sys.argv[1:5]
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
with open(log_path, "a", buffering=1) as log:
    n = 0
    while not os.path.exists(stop):
        n += 1
        buf.seek(0)
        buf.write(b"\0" * 4096)
        buf.seek(0)
        buf.write(b"volfence-pattern-%s-%d\n" % (label.encode(), n))
        try:
            os.pwrite(fd, buf, 0)
            log.write("%.6f ok %d\n" % (time.time(), n))
        except OSError as e:
            log.write("%.6f err %d %d %s\n" % (time.time(), n, e.errno, e.strerror))
        time.sleep(0.02)
os.close(fd)
