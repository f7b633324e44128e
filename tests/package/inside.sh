#!/bin/bash
# Stage 2 of the package test (see run.sh): runs as PID 1 of fresh mount,
# PID and network namespaces. Builds the disposable root -- an overlay of /
# whose upper layer is a tmpfs -- and runs scenario.sh in it with chroot.
# Everything here vanishes when this process exits.
set -euo pipefail
work=$1 deb1=$2 deb2=$3 cgroup_parent=$4 so_has_soname=$5

mnt=$work/mnt
mount -t tmpfs -o size=4g,mode=0700 porthole-pkgtest "$mnt"
mkdir "$mnt/upper" "$mnt/work" "$mnt/root"
mount -t overlay porthole-pkgtest -o "lowerdir=/,upperdir=$mnt/upper,workdir=$mnt/work" "$mnt/root"
r=$mnt/root

mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys" # cgroups for runc
mount -t tmpfs -o mode=0755 run "$r/run"
mkdir -m 1777 "$r/run/lock"
mount -t tmpfs -o mode=1777 tmp "$r/tmp"
# a minimal /dev: the usual character devices and a private devpts
mount -t tmpfs -o mode=0755 dev "$r/dev"
for n in null zero full random urandom tty; do
	touch "$r/dev/$n"
	mount --bind "/dev/$n" "$r/dev/$n"
done
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
ln -s /proc/self/fd "$r/dev/fd"
ln -s /proc/self/fd/0 "$r/dev/stdin"
ln -s /proc/self/fd/1 "$r/dev/stdout"
ln -s /proc/self/fd/2 "$r/dev/stderr"
ip link set lo up

mkdir "$r/tmp/pkgtest"
cp "$deb1" "$deb2" "$work/scenario.sh" "$r/tmp/pkgtest/"
rc=0
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 \
	PORTHOLE_PKGTEST_INTEGRATION="${PORTHOLE_PKGTEST_INTEGRATION:-require}" \
	DEB1="/tmp/pkgtest/$(basename "$deb1")" DEB2="/tmp/pkgtest/$(basename "$deb2")" \
	CGROUP_PARENT="$cgroup_parent" SO_HAS_SONAME="$so_has_soname" \
	chroot "$r" /bin/bash /tmp/pkgtest/scenario.sh || rc=$?
# keep the logs for the caller
cp -r "$r/tmp/pkgtest/logs/." "$work/logs/" 2>/dev/null || true
exit $rc
