#!/bin/sh
# The VM tier's backup executor: snapshot-executor.sh OUTDIR MOUNTPOINT REQUEST_ID
# Records its run, waits for OUTDIR/go-REQUEST_ID (up to 120 s) so the test can write to the
# origin after the snapshot, then copies what the snapshot shows. Request ids starting with
# "fail" exit 3 after that (a failed backup).
out=$1 mp=$2 id=$3
echo "$id $$" >> "$out/runs"
i=0
while [ ! -e "$out/go-$id" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
cat "$mp/before.txt" > "$out/$id.before" 2>/dev/null
if [ -e "$mp/after.txt" ]; then echo present > "$out/$id.after"; fi
echo "reading $mp for $id: $(ls "$mp" | tr '\n' ' ')"
case $id in fail*) echo "backup of $id failed" >&2; exit 3 ;; esac
exit 0
