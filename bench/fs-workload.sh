#!/bin/sh
# One file-system workload, run by busybox sh (in a container, or on the host) in directory DIR:
#   sequential write of SIZE MiB (dd bs=1M, fsync), sequential read of it (bs=1M), creating
#   FILES empty files (a shell loop, no fork per file), stat of every one (ls -ln).
# Prints "seq_write_MBps N", "seq_read_MBps N", "create_per_s N", "stat_per_s N".
# Usage: fs-workload.sh DIR SIZE_MIB FILES [drop]   ("drop" drops this kernel's caches between
# writing and reading, as root; on the host the caller leaves that out).
# Clock: date +%s.%N where it has nanoseconds (GNU date), else /proc/uptime (10 ms steps:
# busybox), so that in a guest each step should take a second or more.
set -e
d=$1; mib=$2; n=$3; drop=${4:-}
case $(date +%N) in
  *N*) now() { cut -d' ' -f1 /proc/uptime; } ;;
  *) now() { date +%s.%N; } ;;
esac
drop_caches() { sync; if [ "$drop" = drop ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
# A fresh name per run; removed file by file at the end (see below).
w=$d/bench-$$
mkdir "$w"
drop_caches
t0=$(now); dd if=/dev/zero of="$w/seq" bs=1M count="$mib" conv=fsync 2>/dev/null; t1=$(now)
drop_caches
t2=$(now); dd if="$w/seq" of=/dev/null bs=1M 2>/dev/null; t3=$(now)
mkdir "$w/small"
t4=$(now); i=0; while [ $i -lt "$n" ]; do : > "$w/small/f$i"; i=$((i + 1)); done; sync; t5=$(now)
drop_caches
t6=$(now); ls -ln "$w/small" > /dev/null; t7=$(now)
# By name, not rm -r: on a host kernel before 6.6 a tmpfs directory's readdir offsets are
# positions that shift as entries go, and virtiofsd seeks by offset, so `rm -r` through
# virtio-fs can skip entries there (seen in the L1 machine, whose /tmp is such a tmpfs).
i=0; while [ $i -lt "$n" ]; do rm -f "$w/small/f$i"; i=$((i + 1)); done
rmdir "$w/small"; rm -f "$w/seq"; rmdir "$w"
awk -v mib="$mib" -v n="$n" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" \
    -v t5="$t5" -v t6="$t6" -v t7="$t7" 'function rate(x, a, b) { d = b - a; if (d < 0.000001) d = 0.000001; return x / d }
  BEGIN { printf "seq_write_MBps %.1f\nseq_read_MBps %.1f\ncreate_per_s %.0f\nstat_per_s %.0f\n",
    rate(mib, t0, t1), rate(mib, t2, t3), rate(n, t4, t5), rate(n, t6, t7) }'
