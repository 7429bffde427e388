# tests/vm/cases/10-base.sh - the guest environment the later cases stand on: the kernel's
# modules, udev, journald, a system D-Bus carrying the project's policy, the extra devices
# run.sh adds.
# Sourced by guest.sh (see lib.sh for check, wait_for, ...).

t_env() {
    uname -a
    cat /proc/cmdline
    log "hostname $(cat /proc/sys/kernel/hostname), boot_id $(cat /proc/sys/kernel/random/boot_id)"
    test -s "/lib/modules/$(uname -r)/modules.dep" || fail "no modules.dep for $(uname -r)" || return 1
    # the artifacts under test are reachable through the 9p root
    local f
    for f in "$VOLFENCED" "$VOLFENCECTL"; do
        test -x "$f" || fail "$f not executable in the guest" || return 1
    done
    test -s "$VOLFENCE_DEB" || fail "$VOLFENCE_DEB not readable in the guest" || return 1
    expect_rc 0 "$VOLFENCED" --version
}
check env-kernel-and-artifacts t_env

t_udev_running() {
    pgrep -a systemd-udevd || fail "systemd-udevd is not running" || return 1
    udevadm control --ping && udevadm settle -t 30
}
check udevd-running t_udev_running

t_system_bus() {
    # The project's policy as an admin would drop it in; the packaged copy in
    # /usr/share/dbus-1/system.d/ is tested by 20-agent.sh.
    install -m 0644 "$VOLFENCE_SRC/dbus/org.volfence.Agent1.conf" /etc/dbus-1/system.d/ || return 1
    start_system_bus || return 1
    expect_rc 0 bus_call ListNames || return 1
    contains "$RUN_OUT" org.freedesktop.DBus || return 1
    if policy_problems; then
        fail "dbus-daemon complained about the volfence policy"
        return 1
    fi
    busctl --system --no-pager list
}
check system-dbus-with-policy t_system_bus

t_journald() {
    start_journald || return 1
    local tag="vmtest-$$-$RANDOM"
    echo "journal works" | systemd-cat -t "$tag" || return 1
    wait_for 10 eval 'journalctl -q --no-pager -t "$tag" -o cat | grep -qx "journal works"'
}
check journald-running t_journald

t_modules() {
    local m
    for m in configfs nvme-fabrics nvme-tcp nvmet nvmet-tcp dm-mod dm-snapshot; do
        modprobe "$m" || fail "modprobe $m" || return 1
    done
    mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config || return 1
    lsmod | grep -E '^(nvme|nvmet|configfs|dm_)'
    test -d /sys/kernel/config/nvmet && test -c /dev/nvme-fabrics && test -c /dev/mapper/control
}
check modules-load t_modules

t_devices() {
    # run.sh adds a sparse virtio-blk disk for LVM cases and an i6300esb watchdog for fence
    # cases. The watchdog is only looked at in sysfs: opening /dev/watchdog* would arm it.
    udevadm settle -t 30
    ls -la /dev/disk/by-id/
    test -b "$(readlink -f /dev/disk/by-id/virtio-lvmdisk)" || fail "no /dev/disk/by-id/virtio-lvmdisk" || return 1
    modprobe i6300esb || return 1
    wait_for 10 test -e /sys/class/watchdog/watchdog0 || return 1
    local id
    id=$(cat /sys/class/watchdog/watchdog0/identity)
    log "watchdog0: $id, timeout $(cat /sys/class/watchdog/watchdog0/timeout 2>/dev/null)s"
    contains "$id" i6300ESB
}
check devices-lvmdisk-and-watchdog t_devices
