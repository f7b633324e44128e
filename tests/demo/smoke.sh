#!/bin/bash
# Demo smoke test (run by .ci/run as root): bring the demo bastion up,
# log in with the generated demo key and run a command in an instance, see
# a cron job's temporary instance come and go, open the web shell's page
# with the printed ticket (and see the replay refused), tear it down, and
# check that nothing is left:
# no state directory, no process, no container, no cgroup, no mount.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PORTHOLE_DEMO_DIR=${PORTHOLE_DEMO_DIR:-/run/porthole-demo-smoke}
export PORTHOLE_DEMO_PORT=${PORTHOLE_DEMO_PORT:-2223}
export PORTHOLE_DEMO_WEB_PORT=${PORTHOLE_DEMO_WEB_PORT:-8023}
STATE=$PORTHOLE_DEMO_DIR
passed=0 failed=0

ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAILED: $*"; failed=$((failed + 1)); }

mounts_before=$(findmnt -rn -o TARGET | sort)
trap '"$REPO/bin/demo" down >/dev/null 2>&1 || true' EXIT

up_out=$(mktemp)
"$REPO/bin/demo" up --detach | tee "$up_out"

ssh_demo() {
    # Exactly the lines the demo prints, plus batch mode.
    timeout 30 ssh -F "$STATE/ssh_config" -o BatchMode=yes -o IdentitiesOnly=yes "$@"
}

out=$(ssh_demo srv-demo1-bbbbb@demo 'hostname; id -u; echo $APP_ENV' 2>&1) || true
if [ "$out" = "$(printf 'srv-demo1-bbbbb\n1000\ndemo')" ]; then
    ok "command in srv-demo1-bbbbb as the app user with the app's environment"
else
    bad "command in srv-demo1-bbbbb printed: $out"
fi

out=$(ssh_demo srv-demo1@demo 'exit 7' 2>&1) && rc=0 || rc=$?
[ "$rc" = 7 ] && ok "exit status passes through" || bad "exit status was $rc: $out"

out=$(ssh_demo srv-demo2@demo 'echo $JOB; id -u; test -e /tmp/nightly-report || echo job-not-run' 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && grep -q "starting a temporary instance of srv-demo2 (latest build)" <<<"$out" \
    && grep -qx "nightly-report" <<<"$out" && grep -qx 1000 <<<"$out" && grep -qx job-not-run <<<"$out"; then
    ok "cron job login in a temporary instance of its build"
else
    bad "cron job login: rc=$rc: $out"
fi
left=$(runc --root "$STATE/runc" list -q | grep -v '^srv-demo1-' || true)
[ -z "$left" ] && [ -z "$(ls -A "$STATE/state/temporary" 2>/dev/null)" ] \
    && ok "the temporary instance is gone after the session" || bad "temporary left: $left $(ls "$STATE/state/temporary")"

url=$(grep -o "http://127.0.0.1:$PORTHOLE_DEMO_WEB_PORT/shell/srv-demo1?ticket=[A-Za-z0-9._-]*" "$up_out" | head -1)
rm -f "$up_out"
page=$(curl -s -w '\n%{http_code}' "$url" || true)
if [ "$(tail -n1 <<<"$page")" = 200 ] && grep -q 'srv-demo1-bbbbb' <<<"$page" && grep -q 'assets/xterm.js' <<<"$page"; then
    ok "the printed web shell URL opens the terminal page with the instance dropdown"
else
    bad "web shell page for '$url': $(head -c 500 <<<"$page")"
fi
page=$(curl -s -w '\n%{http_code}' "$url" || true)
if [ "$(tail -n1 <<<"$page")" = 403 ] && grep -q 'used already' <<<"$page"; then
    ok "the same ticket again is refused (single use)"
else
    bad "replayed ticket: $(head -c 500 <<<"$page")"
fi

sleep 0.5
if grep -q '"event":"web.rejected"' "$STATE/events.log"; then
    ok "porthole-web's events reach the demo's log"
else
    bad "events.log lacks web.rejected"
fi
if grep -q '"event":"keys.decision"' "$STATE/events.log" && grep -q '"event":"session.end"' "$STATE/events.log"; then
    ok "audit events from the keys hook and the session shell reach the demo's log"
else
    bad "events.log lacks keys.decision or session.end: $(head -c 2000 "$STATE/events.log")"
fi

"$REPO/bin/demo" down
trap - EXIT

[ ! -e "$STATE" ] && ok "state directory removed" || bad "$STATE still exists"
if pgrep -f "$STATE" >/dev/null || pgrep -f "sshd -D -f /etc/ssh/sshd_config -E $STATE" >/dev/null; then
    bad "processes left: $(pgrep -af "$STATE")"
else
    ok "no process left"
fi
left=$(find /sys/fs/cgroup -maxdepth 4 -type d -name 'srv-demo*' 2>/dev/null || true)
[ -z "$left" ] && ok "no container cgroup left" || bad "cgroups left: $left"
mounts_after=$(findmnt -rn -o TARGET | sort)
[ "$mounts_before" = "$mounts_after" ] && ok "mount table unchanged" || bad "mounts differ"

echo "demo smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
