# lib.sh: helpers for the interop shell tests (sourced, bash).
#
#   tap_case NAME FUNCTION [ARGS...]   run one case in a subshell, print TAP
#   tap_done                           print the plan, exit 1 if any failed
#   srv_start unix|tcp IMAGE [OPTS...] start rawnbd, wait until it listens;
#                                      sets SRV_PID SRV_URI SRV_LOG SRV_SOCK
#                                      SRV_PORT
#   srv_spawn ARGS...                  the same with exactly these arguments;
#                                      false (SRV_RC) if it exited first
#   srv_launch CMD... / srv_wait_uri   srv_spawn in two steps, CMD being
#                                      rawnbd or a wrapper that execs it
#   srv_stop [SIGNAL]                  signal the last server, wait, check
#                                      exit 0 and a clean log
#   srv_wait_exit                      the last server exits by itself, 0
#   expect_usage_error ARGS...         rawnbd ARGS: status 2, one line
#   expect_start_error WHAT ARGS...    rawnbd ARGS: status 1, one line
#                                      naming WHAT
#   fio_verify_uri URI                 fio writes and verifies through URI
#   make_pki DIR                       TLS credentials (harness.make_pki)
#
# Every server runs on a private unix socket in $T or a free port on
# 127.0.0.1; only the PIDs started here are ever signalled.  A case runs
# with set -euo pipefail: the first failing command fails it, and fail()
# says why.

set -euo pipefail

if [ -z "${RAWNBD:-}" ] || [ ! -x "$RAWNBD" ]; then
    echo "1..0 # SKIP RAWNBD is not set to the rawnbd executable"
    exit 0
fi

INTEROP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONDONTWRITEBYTECODE=1
T=$(mktemp -d "${TMPDIR:-/tmp}/rawnbd-sh-XXXXXX")
STARTED_PIDS=()
SRV_COUNT=0
TAP_N=0
TAP_FAILED=0

kill_started() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

trap 'kill_started; rm -rf "$T"' EXIT

# Skip the whole script unless every command exists.
need() {
    local c
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1; then
            echo "1..0 # SKIP $c is not installed"
            exit 0
        fi
    done
}

# Skip the running case unless $T supports O_DIRECT (for --cache=none).
need_direct_io() {
    dd if=/dev/zero of="$T/.direct" bs=4096 count=1 oflag=direct \
        status=none 2>/dev/null || skip "no O_DIRECT in $T"
    rm -f "$T/.direct"
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Skip the running case.
skip() {
    echo "$*" >"$T/skip-reason"
    exit 77
}

tap_case() {
    local name=$1 rc=0 started=$SECONDS
    shift
    TAP_N=$((TAP_N + 1))
    rm -f "$T/skip-reason"
    (
        # Each case has its own directory (servers, images).
        T=$(mktemp -d "$T/case$TAP_N.XXXXXX")
        trap kill_started EXIT
        set -euo pipefail
        "$@"
    ) >"$T/case.log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
        echo "ok $TAP_N - $name ($((SECONDS - started)) s)"
    elif [ "$rc" = 77 ]; then
        echo "ok $TAP_N - $name # SKIP $(cat "$T/skip-reason" 2>/dev/null)"
    else
        TAP_FAILED=$((TAP_FAILED + 1))
        echo "not ok $TAP_N - $name"
        sed -e 's/^/# /' "$T/case.log"
    fi
}

tap_done() {
    echo "1..$TAP_N"
    [ "$TAP_FAILED" = 0 ]
}

free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sanitizer_report() {
    grep -E 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$1" |
        head -n 1 || true
}

srv_start() {
    local kind=$1 image=$2 i
    shift 2
    for i in 1 2 3 4 5; do
        SRV_SOCK=
        SRV_PORT=
        local where=()
        if [ "$kind" = unix ]; then
            SRV_SOCK=$T/srv$((SRV_COUNT + 1)).sock
            where=(-k "$SRV_SOCK")
        else
            SRV_PORT=$(free_port)
            where=(-b 127.0.0.1 -p "$SRV_PORT")
        fi
        if srv_spawn "${where[@]}" "$@" "$image"; then
            return 0
        fi
        # A TCP port taken in between: try another one.
        if [ "$kind" = tcp ] && grep -q 'cannot listen' "$SRV_LOG"; then
            continue
        fi
        break
    done
    cat "$SRV_LOG" >&2
    fail "rawnbd $* $image did not start listening (status $SRV_RC)"
}

# srv_spawn ARGS...: start "rawnbd --print-uri ARGS" as given.  True once
# it listens (SRV_URI set); false if it exited first (status in SRV_RC).
srv_spawn() {
    srv_launch "$RAWNBD" --print-uri "$@"
    srv_wait_uri
}

# srv_launch COMMAND...: run COMMAND in the background as the server (a
# wrapper that execs rawnbd, or rawnbd itself): SRV_PID, its stderr in
# SRV_LOG, its stdout in SRV_OUT.
srv_launch() {
    SRV_COUNT=$((SRV_COUNT + 1))
    SRV_LOG=$T/srv$SRV_COUNT.log
    SRV_OUT=$T/srv$SRV_COUNT.out
    "$@" >"$SRV_OUT" 2>"$SRV_LOG" </dev/null &
    SRV_PID=$!
    STARTED_PIDS+=("$SRV_PID")
    SRV_URI=
    SRV_RC=
}

# srv_wait_uri: wait up to 30 s for the first line of SRV_OUT (the URI of
# --print-uri) into SRV_URI.  False, with the status in SRV_RC, if the
# server exited or printed nothing (then it is killed).
srv_wait_uri() {
    local n
    for n in $(seq 600); do
        if [ "$(wc -l <"$SRV_OUT")" -ge 1 ]; then
            SRV_URI=$(head -n 1 "$SRV_OUT")
            return 0
        fi
        if ! kill -0 "$SRV_PID" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    kill -KILL "$SRV_PID" 2>/dev/null || true
    SRV_RC=0
    wait "$SRV_PID" || SRV_RC=$?
    return 1
}

# Wait up to $2 seconds (default 30) for PID $1 to exit; false if it runs on.
wait_gone() {
    local pid=$1 secs=${2:-30} n
    for n in $(seq $((secs * 20))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 0
        fi
        # A zombie child counts as gone.
        if [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" = Z ]; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

srv_check_exit() {
    local rc=0 report
    wait "$SRV_PID" || rc=$?
    report=$(sanitizer_report "$SRV_LOG")
    if [ -n "$report" ]; then
        cat "$SRV_LOG" >&2
        fail "sanitizer report in the server log: $report"
    fi
    if [ "$rc" != 0 ]; then
        cat "$SRV_LOG" >&2
        fail "rawnbd exited with status $rc"
    fi
}

srv_stop() {
    kill "-${1:-TERM}" "$SRV_PID" 2>/dev/null || true
    wait_gone "$SRV_PID" 30 || fail "rawnbd still running 30 s after SIG${1:-TERM}"
    srv_check_exit
}

srv_wait_exit() {
    wait_gone "$SRV_PID" 30 || fail "rawnbd still running 30 s after its last client left"
    srv_check_exit
}

sha() {
    sha256sum "$1" | cut -d' ' -f1
}

# same_content FILE1 FILE2 WHAT: the files have the same bytes.
same_content() {
    local a b
    a=$(sha "$1")
    b=$(sha "$2")
    [ "$a" = "$b" ] || fail "$3: checksum $b differs from $a"
}

# mk_image PATH SIZE [OFFSET:LENGTH ...]: a sparse file of SIZE with random
# data at each OFFSET (sizes in dd's units: K, M, G).
mk_image() {
    local path=$1 size=$2 region
    shift 2
    truncate -s 0 "$path"
    truncate -s "$size" "$path"
    for region in "$@"; do
        dd if=/dev/urandom of="$path" bs=64K iflag=count_bytes,skip_bytes \
            oflag=seek_bytes conv=notrunc status=none \
            seek="$(numfmt --from=iec "${region%%:*}")" \
            count="$(numfmt --from=iec "${region##*:}")"
    done
    sync "$path"
}

# Allocation maps as "offset length data|hole" lines, neighbours merged:
# map_of_file PATH, or map_of_json qemu|nbdinfo < the tool's JSON map.
map_of_file() {
    python3 "$INTEROP_DIR/harness.py" file-map "$1"
}

map_of_json() {
    python3 "$INTEROP_DIR/harness.py" json-map "$1"
}

# run_rawnbd ARGS...: run with a 10 s limit; sets RC, OUT, ERR.
run_rawnbd() {
    RC=0
    timeout 10 "$RAWNBD" "$@" >"$T/out" 2>"$T/err" </dev/null || RC=$?
    OUT=$(cat "$T/out")
    ERR=$(cat "$T/err")
}

# expect_usage_error ARGS...: status 2, stdout empty, exactly one line on
# stderr starting "rawnbd: ".
expect_usage_error() {
    run_rawnbd "$@"
    echo "rawnbd $*: status $RC, stderr: $ERR"
    [ "$RC" = 2 ] || fail "rawnbd $*: status $RC, expected 2"
    [ -z "$OUT" ] || fail "rawnbd $*: wrote to stdout: $OUT"
    [ "$(wc -l <"$T/err")" = 1 ] ||
        fail "rawnbd $*: $(wc -l <"$T/err") lines on stderr, expected 1"
    [[ $ERR == rawnbd:\ * ]] || fail "rawnbd $*: message not prefixed 'rawnbd: '"
}

# expect_start_error WHAT ARGS...: status 1, one line on stderr naming WHAT.
expect_start_error() {
    local what=$1
    shift
    run_rawnbd "$@"
    echo "rawnbd $*: status $RC, stderr: $ERR"
    [ "$RC" = 1 ] || fail "rawnbd $*: status $RC, expected 1"
    [ "$(wc -l <"$T/err")" = 1 ] ||
        fail "rawnbd $*: $(wc -l <"$T/err") lines on stderr, expected 1"
    [[ $ERR == *"$what"* ]] || fail "rawnbd $*: message does not name $what"
}

# fio_verify_uri URI: fio's nbd engine, four jobs (one connection each),
# writes random blocks with crc32c verification headers into its own
# 16 MiB of the first 64 MiB, then reads them back and verifies.
fio_verify_uri() {
    local out rc=0
    out=$(cd "$T" && fio --name=verify --verify_state_save=0 --ioengine=nbd --uri="$1" \
        --rw=randwrite --bsrange=4k-64k --size=16M --numjobs=4 \
        --offset_increment=16M --iodepth=32 --verify=crc32c \
        --verify_fatal=1 --do_verify=1 --group_reporting 2>&1) || rc=$?
    echo "$out"
    [ "$rc" = 0 ] || fail "fio exited with status $rc"
    if grep -qE 'verify: bad|err= *[1-9]|crc32c: verify failed' <<<"$out"; then
        fail "fio reported an error"
    fi
}

# make_pki DIR: TLS credentials in DIR (layout: harness.py make_pki);
# skips the running case if certtool or psktool is missing.
make_pki() {
    local rc=0
    python3 "$INTEROP_DIR/harness.py" pki "$1" || rc=$?
    [ "$rc" = 77 ] && skip "certtool or psktool is not installed"
    [ "$rc" = 0 ] || fail "making TLS credentials in $1 failed"
}
