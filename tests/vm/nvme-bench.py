#!/usr/bin/python3
"""Connect benchmark, one process, same run, alternating: the agent's Connect over D-Bus until it
returns a usable device, against the kernel's own path (write the options to /dev/nvme-fabrics,
read the reply, wait until udev made the device's by-id link). Both waits are on events (inotify
on /dev/disk/by-id, as a udev-aware program would), so the baseline burns no CPU that udev needs.
Prints medians, the ratio of medians and the median of per-round ratios.

usage: nvme-bench.py NQN PORT UUID ROUNDS
"""
import ctypes
import os
import select
import statistics
import sys
import time

import dbus

nqn, port, uuid, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
link = f"/dev/disk/by-id/nvme-uuid.{uuid}"
hostnqn = open("/etc/nvme/hostnqn").read().strip()
hostid = open("/etc/nvme/hostid").read().strip()
bus = dbus.SystemBus()
agent_obj = bus.get_object("org.volfence.Agent1", "/org/volfence/Agent1")
agent = dbus.Interface(agent_obj, "org.volfence.Agent1")
peer = dbus.Interface(agent_obj, "org.freedesktop.DBus.Peer")
daemon = dbus.Interface(bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"), "org.freedesktop.DBus")
target = {"nqn": nqn, "traddr": "127.0.0.1", "trsvcid": dbus.UInt32(int(port)), "nsid": dbus.UInt32(1)}


libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE, IN_DELETE, IN_MOVED_TO, IN_MOVED_FROM = 0x100, 0x200, 0x80, 0x40
ino = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
if ino < 0 or libc.inotify_add_watch(ino, b"/dev/disk/by-id", IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM) < 0:
    raise SystemExit(f"inotify on /dev/disk/by-id: errno {ctypes.get_errno()}")


def wait(pred, limit=30.0):
    # Woken by every change in /dev/disk/by-id; udev makes its links there.
    end = time.monotonic() + limit
    while not pred():
        left = end - time.monotonic()
        if left <= 0:
            raise SystemExit("timed out")
        if select.select([ino], [], [], left)[0]:
            try:
                os.read(ino, 65536)
            except BlockingIOError:
                pass


def raw():
    t0 = time.monotonic()
    fd = os.open("/dev/nvme-fabrics", os.O_RDWR)
    os.write(fd, (f"transport=tcp,traddr=127.0.0.1,trsvcid={port},nqn={nqn},"
                  f"hostnqn={hostnqn},hostid={hostid},keep_alive_tmo=5,reconnect_delay=2,ctrl_loss_tmo=60").encode())
    reply = os.read(fd, 256).decode()
    os.close(fd)
    raw_write.append(time.monotonic() - t0)
    wait(lambda: os.path.exists(link))
    took = time.monotonic() - t0
    inst = [f for f in reply.strip().split(",") if f.startswith("instance=")][0].split("=")[1]
    with open(f"/sys/class/nvme/nvme{inst}/delete_controller", "w") as f:
        f.write("1")
    wait(lambda: not os.path.exists(link))
    return took


def dbus_roundtrip():
    # What any call over the bus costs here, for reading the agent's figure: GetId (answered by
    # the bus daemon itself: the client library and one hop each way), Peer.Ping (two hops each
    # way and zbus's dispatch, none of the agent's code) and a call that does no work
    # (ListVolumes; no volume is connected when it runs).
    t = time.monotonic()
    daemon.GetId()
    t0 = time.monotonic()
    peer.Ping()
    t1 = time.monotonic()
    agent.ListVolumes()
    return t0 - t, t1 - t0, time.monotonic() - t1


def agent_connect():
    t0 = time.monotonic()
    dev, info = agent.Connect("bench-vol", target, dbus.Dictionary({}, signature="sv"), timeout=60)
    took = time.monotonic() - t0
    assert os.path.exists(str(dev)), dev
    # The same call again finds the volume connected and does no kernel work: what the call
    # itself costs (bus, arguments, reply), for reading the figure above.
    t1 = time.monotonic()
    agent.Connect("bench-vol", target, dbus.Dictionary({}, signature="sv"), timeout=60)
    again.append(time.monotonic() - t1)
    agent.Disconnect("bench-vol", dbus.Dictionary({}, signature="sv"), timeout=60)
    wait(lambda: not os.path.exists(link))
    return took


a, r, raw_write, bus_id, ping, rt, again = [], [], [], [], [], [], []
raw(); agent_connect()  # warm-up, not counted
for i in range(rounds):
    if i % 2:
        r.append(raw()); a.append(agent_connect())
    else:
        a.append(agent_connect()); r.append(raw())
    d, p, l = dbus_roundtrip()
    bus_id.append(d); ping.append(p); rt.append(l)
for i, (x, y, w) in enumerate(zip(a, r, raw_write[1:])):
    print(f"bench round {i}: agent_ms={x*1000:.1f} raw_ms={y*1000:.1f} raw_write_ms={w*1000:.1f}")
ma, mr = statistics.median(a), statistics.median(r)
paired = statistics.median(x / y for x, y in zip(a, r))
print(f"bench connect: rounds={rounds} agent_median_ms={ma*1000:.1f} raw_median_ms={mr*1000:.1f} "
      f"ratio={ma/mr:.3f} agent_min_ms={min(a)*1000:.1f} raw_min_ms={min(r)*1000:.1f} "
      f"raw_write_median_ms={statistics.median(raw_write[1:])*1000:.1f} paired_ratio_median={paired:.3f} "
      f"bus_getid_median_ms={statistics.median(bus_id)*1000:.1f} "
      f"dbus_ping_median_ms={statistics.median(ping)*1000:.1f} "
      f"dbus_roundtrip_median_ms={statistics.median(rt)*1000:.1f} "
      f"connect_again_median_ms={statistics.median(again[1:])*1000:.1f}")
