#!/bin/bash
# Stage 3 of the package test (see run.sh): runs inside the disposable root.
# Installs, uses, upgrades, removes and purges the package, and checks the
# host comes back byte for byte. Prints TAP-like lines and a closing
#   scenario: N passed, N failed, N skipped
# ("skipped" counts the "pending" checks of PORTHOLE_PKGTEST_INTEGRATION=report;
# run.sh prints it last as "package: …").
set -uo pipefail

P=/tmp/pkgtest
L=$P/logs
mkdir -p "$L"
MODE=${PORTHOLE_PKGTEST_INTEGRATION:-require}
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q -o Dpkg::Use-Pty=0)

SHELL_BIN=/usr/lib/porthole/porthole-shell
DROPIN=/etc/ssh/sshd_config.d/10-porthole.conf
CONFIG=/etc/porthole/porthole.toml
PROBE=user=srv-probe,host=localhost,addr=127.0.0.1
ADMIN=user=root,host=localhost,addr=127.0.0.1
SSHD_PORT=2299
CP_PORT=8099
CID=srv-abc123-d4e5f
V1=$(dpkg-deb -f "$DEB1" Version)
V2=$(dpkg-deb -f "$DEB2" Version)

pass=0 fail=0 pend=0
ok() {
	echo "ok - $*"
	pass=$((pass + 1))
}
bad() {
	echo "not ok - $*"
	fail=$((fail + 1))
}
# check DESCRIPTION COMMAND...: a check of the package itself
check() {
	local desc=$1
	shift
	if run "$desc" "$@"; then ok "$desc"; else bad "$desc" && show; fi
}
# runs a check's command, its output into check.out and checks.log
run() {
	local desc=$1
	shift
	"$@" >"$L/check.out" 2>&1
	local rc=$?
	{ echo "### $desc: $*"; cat "$L/check.out"; } >>"$L/checks.log"
	return $rc
}
show() { tail -n 40 "$L/check.out" | sed 's/^/#   /'; }
# icheck DESCRIPTION COMMAND...: needs the real NSS module, keys hook and
# session shell; "pending" instead of "not ok" in report mode
icheck() {
	local desc=$1
	shift
	if run "$desc" "$@"; then
		ok "$desc"
	elif [ "$MODE" = report ]; then
		echo "pending - $desc (needs the real NSS module / keys hook / session shell)"
		pend=$((pend + 1))
	else
		bad "$desc"
		show
	fi
}
fatal() {
	echo "not ok - FATAL: $*"
	fail=$((fail + 1))
	exit 1
}
step() { echo "== $*"; }

pids=()
cleanup() {
	local p
	runc --root /run/runc delete --force "$CID" >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	kill "$(cat /run/sshd.pid 2>/dev/null)" 2>/dev/null || true
	wait 2>/dev/null
	# run.sh repeats this as its last line
	echo "$pass passed, $fail failed, $pend skipped" >"$L/summary"
	echo "scenario: $pass passed, $fail failed, $pend skipped"
	[ $fail = 0 ]
	exit $?
}
trap cleanup EXIT

# --- what "the host as it was" means -----------------------------------------
# Byte for byte: these files. File list: every path under the system trees
# with its type, mode and owner. Left out of the list, because apt/dpkg and
# friends rewrite them on any install whatever the package does: apt's and
# debconf's caches, logs, dpkg's journal and *-old backups, man-db's index,
# and the shadow tools' backups (/etc/passwd- etc.).
EXACT=(/etc/nsswitch.conf /etc/passwd /etc/group /etc/shadow /etc/gshadow /var/lib/dpkg/statoverride)
file_list() {
	find /etc /usr /var /opt /srv /home /root -xdev \
		\( -path /var/log -o -path /var/cache/apt -o -path /var/lib/apt -o -path /var/cache/debconf \
		-o -path /var/cache/man -o -path /var/lib/dpkg/updates -o -path /root/.cargo -o -path /root/.rustup \
		-o -path /root/.cache -o -path /var/cache/ldconfig -o -name '*-old' \
		-o -path /etc/passwd- -o -path /etc/group- -o -path /etc/shadow- -o -path /etc/gshadow- \) -prune \
		-o -printf '%y %m %u:%g %p\n' | LC_ALL=C sort
}
snapshot() {
	local d=$P/snap-$1 f
	mkdir -p "$d"
	for f in "${EXACT[@]}"; do cp -a "$f" "$d/$(basename "$f")"; done
	file_list >"$d/files"
	full_file_list >"$d/files-full"
	sshd -T -C "$ADMIN" >"$d/sshd-admin" 2>&1
}
# the same list without the exclusions, for the record (logs/churn.diff)
full_file_list() {
	find /etc /usr /var /opt /srv /home /root -xdev \( -path /root/.cargo -o -path /root/.rustup \) -prune \
		-o -printf '%y %m %u:%g %p\n' | LC_ALL=C sort
}
same_as_baseline() {
	local f rc=0
	for f in "${EXACT[@]}"; do
		cmp "$P/snap-base/$(basename "$f")" "$f" || rc=1
	done
	file_list >"$P/files-now"
	diff -u "$P/snap-base/files" "$P/files-now" || rc=1
	return $rc
}

# --- helpers -----------------------------------------------------------------------
wait_port() {
	local i
	for i in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	return 1
}
SSH=(ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
	-o IdentitiesOnly=yes -o ConnectTimeout=10 -o LogLevel=ERROR -p "$SSHD_PORT")
# login KEY USER COMMAND -> prints remote output; returns ssh's status
login() {
	local key=$1 user=$2
	shift 2
	timeout 60 "${SSH[@]}" -i "$key" "$user@127.0.0.1" "$@" </dev/null
}
accepted_count() { grep -c "Accepted publickey for $1 " "$L/sshd.log" || true; }
login_ok() {
	local before out rc
	before=$(accepted_count "$1")
	out=$(login "$P/client/id_ed25519" "$1" 'cat /etc/porthole-pkgtest; exit 7')
	rc=$?
	echo "ssh $1: status $rc, output: $out"
	if [ "$(accepted_count "$1")" -le "$before" ]; then
		echo "sshd did not accept the key for $1"
		diagnose
		return 1
	fi
	[ "$out" = "inside $CID" ] && [ $rc = 7 ] || { diagnose; return 1; }
}
# sftp_ok USER: the packaged porthole-sftp serves a file of the container
# (its image has no sftp-server) through the installed shell.
sftp_ok() {
	local got=$P/sftp-got
	rm -f "$got"
	echo "get /etc/porthole-pkgtest $got" |
		timeout 60 sftp -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
			-o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR \
			-P "$SSHD_PORT" -i "$P/client/id_ed25519" -b - "$1@127.0.0.1" || { diagnose; return 1; }
	[ "$(cat "$got")" = "inside $CID" ] || { diagnose; return 1; }
}
diagnose() {
	echo "--- sshd.log (tail)"
	tail -n 15 "$L/sshd.log"
	echo "--- syslog (tail)"
	tail -n 10 "$L/syslog" 2>/dev/null
}
auth_ok() {
	local before
	before=$(accepted_count "$1")
	login "$P/client/id_ed25519" "$1" true
	[ "$(accepted_count "$1")" -gt "$before" ] || { diagnose; return 1; }
}
keys_decision_logged() {
	grep '"event":"keys.decision"' "$L/syslog" | grep '"service":"srv-abc123"' | grep -q '"outcome":"accepted"'
}
refused() {
	local rc=0
	login "$1" "$2" true || rc=$?
	echo "ssh status $rc"
	[ $rc = 255 ]
}
sshd_alive() { ssh-keyscan -p "$SSHD_PORT" -T 5 127.0.0.1 2>/dev/null | grep -q ssh-ed25519; }
sighups() { grep -c 'Received SIGHUP' "$L/sshd.log" || true; }
eff() { sshd -T -C "$1" 2>/dev/null | sed -n "s/^$2 //p"; }
wired() {
	[ "$(eff "$PROBE" authorizedkeyscommand)" = '/usr/lib/porthole/porthole-keys %u %f %t %k' ] &&
		[ "$(eff "$PROBE" authorizedkeyscommanduser)" = porthole ] &&
		[ "$(eff "$PROBE" forcecommand)" = "$SHELL_BIN" ]
}
unwired() { [ "$(eff "$PROBE" authorizedkeyscommand)" = none ] && [ "$(eff "$PROBE" forcecommand)" = none ]; }
admin_untouched() { sshd -T -C "$ADMIN" 2>&1 | diff -u "$P/snap-base/sshd-admin" -; }
one_porthole_per_line() {
	[ "$(grep -Ec '^passwd:.*[[:space:]]porthole([[:space:]]|$)' /etc/nsswitch.conf)" = 1 ] &&
		[ "$(grep -Ec '^group:.*[[:space:]]porthole([[:space:]]|$)' /etc/nsswitch.conf)" = 1 ] &&
		[ "$(grep -o porthole /etc/nsswitch.conf | wc -l)" = 2 ]
}
nsswitch_is_baseline_plus_porthole() {
	one_porthole_per_line &&
		grep -Eq '^passwd:.*files porthole' /etc/nsswitch.conf &&
		grep -Eq '^group:.*files porthole' /etc/nsswitch.conf &&
		sed -E 's/ porthole([[:space:]]|$)/\1/' /etc/nsswitch.conf | cmp - "$P/snap-base/nsswitch.conf"
}
mode_of() { stat -c '%a %U:%G' "$1" 2>/dev/null; }
field() { getent passwd "$1" | cut -d: -f"$2"; }
srv_resolves_to_session() {
	local n=$1 s e
	s=$(getent passwd porthole-session) || return 1
	e=$(getent passwd "$n") || { echo "getent passwd $n: not found"; return 1; }
	echo "$e"
	[ "$(echo "$e" | cut -d: -f1)" = "$n" ] &&
		[ "$(echo "$e" | cut -d: -f2)" = '*' ] &&
		[ "$(echo "$e" | cut -d: -f3-4,6-7)" = "$(echo "$s" | cut -d: -f3-4,6-7)" ]
}
not_found() { ! getent passwd "$1"; }
status_is() { [ "$(dpkg-query -W -f='${db:Status-Status}' porthole 2>/dev/null)" = "$1" ]; }
version_is() { [ "$(dpkg-query -W -f='${Version}' porthole)" = "$1" ]; }
in_deb() {
	# in_deb PERMS OWNER PATH: one line of `dpkg-deb -c`
	awk -v p="$1" -v o="$2" -v f="$3" '$1==p && $2==o && $6==f {found=1} END {exit !found}' "$L/dpkg-deb-c.txt"
}

# --- 0. the disposable root ----------------------------------------------------------
step "setup"
# This image is Docker-style: its policy-rc.d forbids every service action.
# A bastion has none, and the maintainer scripts' sshd reload is under test.
rm -f /usr/sbin/policy-rc.d
if dpkg-query -W -f='${db:Status-Status}' porthole 2>/dev/null | grep -qv not-installed; then
	fatal "porthole is already installed on this host; the test needs a clean baseline"
fi
mkdir -p /run/sshd
busybox syslogd -n -O "$L/syslog" &
pids+=($!)
snapshot base

# --- 1. install ---------------------------------------------------------------------
step "install $V1"
dpkg-deb -c "$DEB1" | tee "$L/dpkg-deb-c.txt"
check "deb: porthole-keys 0755 root in /usr/lib/porthole" in_deb -rwxr-xr-x 0/0 ./usr/lib/porthole/porthole-keys
check "deb: porthole-picker 0755 root in /usr/lib/porthole (never setuid)" in_deb -rwxr-xr-x 0/0 ./usr/lib/porthole/porthole-picker
check "deb: porthole-shell shipped 0755 root (setuid only through dpkg-statoverride)" \
	in_deb -rwxr-xr-x 0/0 ./usr/lib/porthole/porthole-shell
check "deb: porthole 0755 root in /usr/sbin" in_deb -rwxr-xr-x 0/0 ./usr/sbin/porthole
check "deb: porthole-web 0755 root in /usr/lib/porthole" in_deb -rwxr-xr-x 0/0 ./usr/lib/porthole/porthole-web
check "deb: porthole-web.service (disabled) in /lib/systemd/system" in_deb -rw-r--r-- 0/0 ./lib/systemd/system/porthole-web.service
check "deb: porthole-sftp 0755 root in /usr/lib/porthole" in_deb -rwxr-xr-x 0/0 ./usr/lib/porthole/porthole-sftp
check "deb: libnss_porthole.so.2 0644 at the multiarch path" \
	in_deb -rw-r--r-- 0/0 ./usr/lib/x86_64-linux-gnu/libnss_porthole.so.2
check "deb: sshd drop-in 0644" in_deb -rw-r--r-- 0/0 ./etc/ssh/sshd_config.d/10-porthole.conf
check "deb: porthole.toml 0644" in_deb -rw-r--r-- 0/0 ./etc/porthole/porthole.toml
check "deb: copyright, changelog and man pages" bash -c "grep -q ' ./usr/share/doc/porthole/copyright$' '$L/dpkg-deb-c.txt' &&
	grep -q ' ./usr/share/doc/porthole/changelog.Debian.gz$' '$L/dpkg-deb-c.txt' &&
	for m in man8/porthole.8.gz man8/porthole-keys.8.gz man8/porthole-shell.8.gz man5/porthole.toml.5.gz; do
		grep -q \" ./usr/share/man/\$m\$\" '$L/dpkg-deb-c.txt' || exit 1; done"
check "deb: no setuid, setgid or world-writable file inside" \
	bash -c "! awk '{print \$1}' '$L/dpkg-deb-c.txt' | grep -E '^...[sS]|^......[sS]|^........w'"
check "deb: conffiles are the drop-in and porthole.toml" \
	bash -c "dpkg-deb --ctrl-tarfile '$DEB1' | tar -xO ./conffiles | sort | diff - <(printf '%s\n' /etc/porthole/porthole.toml $DROPIN)"
check "deb: depends on openssh-server (>= 1:9.2) and computed libc" \
	bash -c "dpkg-deb -f '$DEB1' Depends | grep -F 'openssh-server (>= 1:9.2)' && dpkg-deb -f '$DEB1' Depends | grep -E 'libc6 \\(>= '"

check "apt install ./porthole_${V1}_amd64.deb" "${APT[@]}" install "$DEB1" </dev/null
check "package installed" status_is installed
check "porthole-shell is 4750 root:porthole-session" test "$(mode_of $SHELL_BIN)" = "4750 root:porthole-session"
check "statoverride registered" test "$(dpkg-statoverride --list $SHELL_BIN)" = "root porthole-session 4750 $SHELL_BIN"
check "account porthole: system, nologin, home /nonexistent (not created)" \
	bash -c "[ \"\$(getent passwd porthole | cut -d: -f6-7)\" = /nonexistent:/usr/sbin/nologin ] &&
		[ \"\$(getent passwd porthole | cut -d: -f3)\" -lt 1000 ] && [ ! -e /nonexistent ]"
check "account porthole-session: system, home /var/lib/porthole/home, shell porthole-shell" \
	bash -c "[ \"\$(getent passwd porthole-session | cut -d: -f6-7)\" = /var/lib/porthole/home:$SHELL_BIN ] &&
		[ \"\$(getent passwd porthole-session | cut -d: -f3)\" -lt 1000 ]"
check "account porthole-session is locked" bash -c "getent shadow porthole-session | cut -d: -f2 | grep -q '^!'"
check "/var/lib/porthole/home is 755 root:root" test "$(mode_of /var/lib/porthole/home)" = "755 root:root"
check "account porthole-web: system, nologin, locked, in group porthole" \
	bash -c "[ \"\$(getent passwd porthole-web | cut -d: -f6-7)\" = /nonexistent:/usr/sbin/nologin ] &&
		getent shadow porthole-web | cut -d: -f2 | grep -q '^!' && id -nG porthole-web | tr ' ' '\\n' | grep -qx porthole"
check "/var/lib/porthole/web is 700 porthole-web:porthole-web" test "$(mode_of /var/lib/porthole/web)" = "700 porthole-web:porthole-web"
check "/var/cache/porthole is 700 porthole:porthole" test "$(mode_of /var/cache/porthole)" = "700 porthole:porthole"
check "/etc/porthole/services is 755 root:root" test "$(mode_of /etc/porthole/services)" = "755 root:root"
check "config is 644 root:root" test "$(mode_of $CONFIG)" = "644 root:root"
check "nsswitch.conf: porthole right after files on passwd: and group:, nothing else changed" \
	nsswitch_is_baseline_plus_porthole
check "sshd -T: srv-* logins use porthole-keys as porthole and porthole-shell" wired
check "sshd -T: root's login is exactly as before" admin_untouched
check "ldconfig knows libnss_porthole.so.2" bash -c "ldconfig -p | grep -q 'libnss_porthole.so.2 '"
check "man pages installed" bash -c "man -w 8 porthole && man -w 8 porthole-keys && man -w 8 porthole-shell && man -w 5 porthole.toml"
check "names outside the grammar do not resolve" bash -c "! getent passwd srv- && ! getent passwd srv-ABC && ! getent passwd nosuchuser-pkgtest"
icheck "libnss_porthole.so.2 has SONAME libnss_porthole.so.2" test "$SO_HAS_SONAME" = yes
icheck "getent passwd srv-abc123: the session account's uid/gid/home/shell, password '*'" srv_resolves_to_session srv-abc123
icheck "getent passwd srv-abc123-d4e5f resolves too" srv_resolves_to_session srv-abc123-d4e5f
icheck "porthole --help prints usage" bash -c "porthole --help | grep -qi usage"
icheck "porthole check-config accepts the packaged config" bash -c "porthole check-config | grep -q ': OK'"

# --- 2. log in through the installed sshd into a runc container -----------------------
step "login (control plane on 127.0.0.1:$CP_PORT, sshd on 127.0.0.1:$SSHD_PORT, runc container $CID)"
# the instance: a busybox-static root filesystem
rootfs=$P/bundle/rootfs
mkdir -p "$rootfs"/{bin,etc,root,proc,sys,dev,tmp}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(busybox --list); do
	[ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
echo "inside $CID" >"$rootfs/etc/porthole-pkgtest"
(cd "$P/bundle" && runc spec) || fatal "runc spec"
python3 - "$P/bundle/config.json" "$CID" "$CGROUP_PARENT" <<'EOF' || fatal "editing config.json"
import json, sys
path, cid, parent = sys.argv[1:]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/sleep", "3600"]
c["root"]["readonly"] = False
c["hostname"] = cid
c["annotations"] = {"io.porthole.service": "srv-abc123", "io.porthole.instance": "d4e5f"}
c["linux"]["cgroupsPath"] = "/%s/%s" % (parent, cid)
json.dump(c, open(path, "w"), indent=1)
EOF
runc --root /run/runc run --detach --bundle "$P/bundle" "$CID" </dev/null >"$L/runc.log" 2>&1 ||
	fatal "runc run (see runc.log)"
check "container $CID is running" bash -c "runc --root /run/runc state $CID | grep -q '\"status\": \"running\"'"

# the control plane (API v1) and the client's keys
mkdir -p "$P/client" "$P/cp/v1/services/srv-abc123"
ssh-keygen -q -t ed25519 -N '' -C pkgtest@laptop -f "$P/client/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -C stranger@laptop -f "$P/client/stranger"
python3 - "$P/client/id_ed25519.pub" >"$P/cp/v1/services/srv-abc123/ssh" <<'EOF'
import json, sys
key = open(sys.argv[1]).read().strip()
print(json.dumps({
    "service": {"id": "srv-abc123", "name": "pkgtest", "type": "web_service", "plan": "starter"},
    "keys": [{"public_key": key, "owner": "pkgtest@example.com", "name": "package test"}],
}))
EOF
/usr/bin/python3 -m http.server "$CP_PORT" --bind 127.0.0.1 --directory "$P/cp" >"$L/control-plane.log" 2>&1 &
pids+=($!)
wait_port "$CP_PORT" || fatal "control plane did not start"
# the one line an admin edits
sed -i "s|^url = .*|url = \"http://127.0.0.1:$CP_PORT\"|" "$CONFIG"
echo "# edited by the package test" >>"$CONFIG"
sha256sum "$CONFIG" >"$P/config.sha256"

/usr/sbin/sshd -D -e -o LogLevel=VERBOSE -p "$SSHD_PORT" -o ListenAddress=127.0.0.1 2>>"$L/sshd.log" &
pids+=($!)
wait_port "$SSHD_PORT" || fatal "sshd did not start (see sshd.log)"

icheck "login: sshd accepts srv-abc123-d4e5f with the key the control plane lists" auth_ok srv-abc123-d4e5f
icheck "login: 'ssh srv-abc123-d4e5f@host cmd' runs in the container and passes exit status 7 back" login_ok srv-abc123-d4e5f
icheck "login: 'ssh srv-abc123@host cmd' reaches the service's running instance" login_ok srv-abc123
icheck "login: the keys hook logged its decision to syslog (authpriv)" keys_decision_logged
icheck "sftp: porthole-sftp serves the container's files (the image has no sftp-server)" sftp_ok srv-abc123-d4e5f
check "login: a key the control plane does not list is refused" refused "$P/client/stranger" srv-abc123
check "login: a name outside the grammar is refused" refused "$P/client/id_ed25519" srv-NOPE

# --- 3. sshd safety: a drop-in sshd rejects is rolled back; a competing config is reported -
step "sshd safety"
dpkg-deb --fsys-tarfile "$DEB1" | tar -xO ".$DROPIN" >"$P/dropin.pristine"
echo "ThisIsNotAnSshdKeyword yes" >>"$DROPIN"
rc=0
/var/lib/dpkg/info/porthole.postinst configure "$V1" >"$L/rollback.log" 2>&1 || rc=$?
cat "$L/rollback.log"
check "rejected drop-in: postinst fails" test $rc != 0
check "rejected drop-in: moved to 10-porthole.conf.disabled" bash -c "[ ! -e $DROPIN ] && [ -e $DROPIN.disabled ]"
check "rejected drop-in: the admin is told loudly" grep -q 'sshd -t REJECTS' "$L/rollback.log"
check "rejected drop-in: sshd -t accepts the configuration left behind" sshd -t
check "rejected drop-in: the running sshd still answers" sshd_alive
cp "$P/dropin.pristine" "$DROPIN.disabled"
check "fixed drop-in: postinst configure succeeds" /var/lib/dpkg/info/porthole.postinst configure "$V1"
check "fixed drop-in: back in place, as shipped" cmp "$P/dropin.pristine" "$DROPIN"
check "fixed drop-in: srv-* wired again" wired

printf 'Match User srv-*\n\tAuthorizedKeysCommand /bin/true\n\tAuthorizedKeysCommandUser nobody\n' \
	>/etc/ssh/sshd_config.d/05-pkgtest-other.conf
rc=0
/var/lib/dpkg/info/porthole.postinst configure "$V1" >"$L/competing.log" 2>&1 || rc=$?
cat "$L/competing.log"
check "competing AuthorizedKeysCommand for srv-*: warned loudly" grep -q 'ANOTHER CONFIGURATION GOVERNS srv-\* USERS' "$L/competing.log"
check "competing AuthorizedKeysCommand for srv-*: not fatal" test $rc = 0
rm -f /etc/ssh/sshd_config.d/05-pkgtest-other.conf
/usr/lib/porthole/porthole-maint sshd-reload
check "repeated configure: one porthole per nsswitch line" one_porthole_per_line
check "repeated configure: one porthole-session account" test "$(grep -c '^porthole-session:' /etc/passwd)" = 1

# --- 4. upgrade to a rebuilt package with a higher version ---------------------------
step "upgrade to $V2"
check "apt install ./porthole_${V2}_amd64.deb" "${APT[@]}" install "$DEB2" </dev/null
check "upgraded to $V2" version_is "$V2"
check "upgrade: the edited porthole.toml survives" sha256sum -c "$P/config.sha256"
check "upgrade: no .dpkg-new/.dpkg-dist/.dpkg-old left" bash -c "! ls /etc/porthole/*.dpkg-* /etc/ssh/sshd_config.d/*.dpkg-* 2>/dev/null"
check "upgrade: porthole-shell still 4750 root:porthole-session" test "$(mode_of $SHELL_BIN)" = "4750 root:porthole-session"
check "upgrade: nsswitch.conf unchanged" nsswitch_is_baseline_plus_porthole
check "upgrade: srv-* still wired" wired
icheck "upgrade: login still works" login_ok srv-abc123-d4e5f

# --- 5. remove, reinstall from config-files, remove -----------------------------------
step "remove"
hups=$(sighups)
check "apt remove porthole" "${APT[@]}" remove porthole </dev/null
check "remove: package in config-files state" status_is config-files
check "remove: nsswitch.conf back byte for byte" cmp "$P/snap-base/nsswitch.conf" /etc/nsswitch.conf
check "remove: drop-in moved aside (sshd does not read *.disabled)" bash -c "[ ! -e $DROPIN ] && [ -e $DROPIN.disabled ]"
check "remove: sshd -T no longer wires srv-*" unwired
check "remove: the running sshd was reloaded" test "$(sighups)" -gt "$hups"
check "remove: srv-abc123 no longer resolves" not_found srv-abc123
check "remove: login refused" refused "$P/client/id_ed25519" srv-abc123-d4e5f
check "remove: programs gone, edited config kept" bash -c "[ ! -e $SHELL_BIN ] && [ ! -e /usr/lib/porthole/porthole-keys ] && sha256sum -c $P/config.sha256"
check "remove: root's login is exactly as before" admin_untouched

step "reinstall from config-files state"
check "apt install ./porthole_${V2}_amd64.deb again" "${APT[@]}" install "$DEB2" </dev/null
check "reinstall: drop-in back in place" bash -c "[ -e $DROPIN ] && [ ! -e $DROPIN.disabled ] && cmp $P/dropin.pristine $DROPIN"
check "reinstall: nsswitch.conf has porthole again" nsswitch_is_baseline_plus_porthole
check "reinstall: srv-* wired" wired
icheck "reinstall: login works" login_ok srv-abc123-d4e5f
check "apt remove porthole again" "${APT[@]}" remove porthole </dev/null
check "second remove: nsswitch.conf back byte for byte" cmp "$P/snap-base/nsswitch.conf" /etc/nsswitch.conf

# --- 6. purge --------------------------------------------------------------------------------
step "purge"
check "apt purge porthole" "${APT[@]}" purge porthole </dev/null
check "purge: package gone from dpkg" bash -c "! dpkg-query -W -f='\${db:Status-Status}' porthole 2>/dev/null | grep -qv not-installed"
check "purge: accounts gone" bash -c "! getent passwd porthole && ! getent passwd porthole-session && ! getent group porthole && ! getent group porthole-session"
check "purge: nsswitch.conf, passwd, group, shadow, gshadow, statoverride and the file list are back byte for byte" same_as_baseline
check "purge: sshd -T for root exactly as before" admin_untouched
full_file_list | diff -u "$P/snap-base/files-full" - >"$L/churn.diff"
echo "# paths that differ only inside the excluded caches/logs/backups: $(grep -c '^[-+][^-+]' "$L/churn.diff") (logs/churn.diff)"
