#!/usr/bin/env bash
# Runs every fuzz target (or those in $TARGETS) for SECONDS each (default 60)
# on its corpus in fuzz/corpus/<target>, printing the executions per target.
# Exits non-zero when any target finds a crash or a broken property; the
# input is then in fuzz/artifacts/<target>/ (copy it to
# fuzz/regressions/<target>/ with the fix so the replay test keeps it).
set -euo pipefail
cd "$(dirname "$0")"

secs="${1:-60}"
targets="${TARGETS:-names api keys container user_auth runtime config picker replay sftp_events}"

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo fuzz passes nightly-only flags (-Zsanitizer); this lets a stable
# toolchain accept them.
export RUSTC_BOOTSTRAP=1
cargo fuzz build

mkdir -p logs
failed=""
for t in $targets; do
    mkdir -p "corpus/$t"
    log="logs/$t.log"
    extra=()
    if [ -d "regressions/$t" ]; then extra=("regressions/$t"); fi
    start=$(date +%s)
    if cargo fuzz run "$t" "corpus/$t" "${extra[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 >"$log" 2>&1; then
        result=ok
    else
        result=FOUND
        failed="$failed $t"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "$t: ${execs:-?} executions in $(($(date +%s) - start)) s, $cov, $result (log: fuzz/$log)"
done
if [ -n "$failed" ]; then
    echo "findings in:$failed (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
