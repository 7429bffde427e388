#!/bin/bash
# tests/vm/guest-resv-capture.sh - guest side of tests/vm/capture-resv.sh: the raw bytes of
# NVMe reservation Reports (extended data structure) from a real nvmet target, for the
# decoder's unit tests (tests/fixtures/nvme-resv-7.3/). Two initiators with their own host NQN
# and host ID (nvme_core.multipath=N: each its own /dev/nvmeXn1), as in the reservations probe
# (../shared/reference/vm/reservations/).
#
# Usage (inside the guest): guest-resv-capture.sh OUTDIR
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
OUT=$1
W=/run/resv
mkdir -p "$OUT" "$W"
exec > "$OUT/capture.log" 2>&1
set -x
uname -r
for m in configfs nvmet nvmet-tcp nvme-tcp nvme-fabrics; do modprobe "$m"; done
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
NQN=nqn.2026-12.io.volfence:capture
S=/sys/kernel/config/nvmet/subsystems/$NQN
P=/sys/kernel/config/nvmet/ports/1
truncate -s 64M $W/ns1.img
mkdir "$S" && echo 1 > "$S/attr_allow_any_host"
mkdir "$S/namespaces/1"
echo -n $W/ns1.img > "$S/namespaces/1/device_path"
echo 1 > "$S/namespaces/1/buffered_io"
echo 1 > "$S/namespaces/1/resv_enable"
echo 1 > "$S/namespaces/1/enable"
mkdir "$P" && echo tcp > "$P/addr_trtype" && echo ipv4 > "$P/addr_adrfam"
echo 127.0.0.1 > "$P/addr_traddr" && echo 4420 > "$P/addr_trsvcid"
ln -s "$S" "$P/subsystems/$NQN"
udevd=$(command -v udevd || echo /lib/systemd/systemd-udevd)
$udevd --daemon; udevadm trigger; udevadm settle -t 20
connect() {   # connect HOSTID : a controller for host nqn uuid:HOSTID
    local fd reply
    exec {fd}<>/dev/nvme-fabrics
    echo -n "transport=tcp,traddr=127.0.0.1,trsvcid=4420,nqn=$NQN,hostnqn=nqn.2014-08.org.nvmexpress:uuid:$1,hostid=$1,duplicate_connect" >&$fd
    read -r reply <&$fd; exec {fd}>&-
    echo "$reply"
}
A_ID=11111111-1111-1111-1111-111111111111
B_ID=22222222-2222-2222-2222-222222222222
connect $A_ID; connect $B_ID
udevadm settle -t 20
dev_of() {   # dev_of HOSTID : the namespace block device of that host's controller
    local c
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat $c/hostid)" = "$1" ] && { ls -d $c/nvme*n1 | xargs -n1 basename | sed 's|^|/dev/|'; return; }
    done
}
DA=$(dev_of $A_ID); DB=$(dev_of $B_ID)
echo "A=$DA B=$DB"
report() {   # report NAME : the raw Report (EDS) through A's controller
    nvme resv-report "$DA" -n 1 -e -d 1023 -b > "$OUT/$1.bin"
    nvme resv-report "$DA" -n 1 -e -d 1023 -o json > "$OUT/$1.json"
}
report empty
nvme resv-register "$DA" -n 1 --nrkey=0xa1 --rrega=0
report a-registered
nvme resv-acquire "$DA" -n 1 --crkey=0xa1 --rtype=3 --racqa=0
nvme resv-register "$DB" -n 1 --nrkey=0xb1 --rrega=0
report a-holds-b-registered
nvme resv-acquire "$DB" -n 1 --crkey=0xb1 --prkey=0xa1 --rtype=3 --racqa=2
nvme resv-report "$DB" -n 1 -e -d 1023 -b > "$OUT/b-preempted-a.bin"
nvme resv-report "$DB" -n 1 -e -d 1023 -o json > "$OUT/b-preempted-a.json"
# A's write now: the status the passthrough returns (nvme-cli prints it)
nvme write "$DA" -n 1 -s 0 -c 0 -z 512 -d /dev/zero > "$OUT/a-write-after-preempt.txt" 2>&1
echo "rc=$?" >> "$OUT/a-write-after-preempt.txt"
nvme resv-release "$DB" -n 1 --crkey=0xb1 --rtype=3 --rrela=0
nvme resv-report "$DB" -n 1 -e -d 1023 -b > "$OUT/b-released.bin"
nvme resv-report "$DB" -n 1 -e -d 1023 -o json > "$OUT/b-released.json"
ls -l "$OUT"
echo done
