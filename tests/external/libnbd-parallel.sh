#!/bin/bash
# libnbd-parallel.sh - libnbd's own multi-connection tests against rawnbd.
#
# Builds synch-parallel, aio-parallel and aio-parallel-load from Debian's
# libnbd source package (the version of the installed libnbd-dev), linked
# against the installed libnbd, and runs each against
#   rawnbd -k SOCK -t IMAGE
# in place of the nbdkit command its wrapper script uses:
#   synch-parallel     nbdkit --filter=cow pattern size=8M   (8 threads, 1 request each)
#   aio-parallel       nbdkit --filter=cow pattern size=64M  (8 connections x 64 in flight)
#   aio-parallel-load  nbdkit memory size=64M                (8 x 64, load only)
# The first two keep a shadow copy of the pattern plugin's contents (the
# big-endian 64-bit offset of every 8-byte word) and check every read
# against it, so IMAGE is filled with that pattern; the third gets zeros.
# Each test runs 10 s, asserts the size, CAN_MULTI_CONN and writability,
# and exits non-zero on any error or data mismatch.  It must not take much
# longer (a request without a reply stalls it: failed after 25 s, killed
# after 60 s), and the server must still be running afterwards, exit 0
# within 20 s of SIGTERM and log no sanitizer report.  On a stall or a
# shutdown hang the server's thread stacks (gdb, if installed) go into the
# failure report.
#
# Usage: libnbd-parallel.sh [TEST...]   (default: all three)
# Environment: RAWNBD, RAWNBD_EXTERNAL_CACHE, RAWNBD_REQUIRE_EXTERNAL (see
# lib.sh), LIBNBD_DEBUG (passed on; libnbd then logs every request).
# Output: "PASS name (N s)" or "FAIL name (N s): reason" (with the logs), then
# "N passed, N failed".  Exit 0 all passed, 1 a failure, 77 skipped.

set -euo pipefail
EXT_NAME=libnbd-parallel
. "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

ALL_TESTS="synch-parallel aio-parallel aio-parallel-load"
TESTS=${*:-$ALL_TESTS}
for t in $TESTS; do
    case " $ALL_TESTS " in *" $t "*) ;; *) ext_fail_setup "unknown test '$t' (known: $ALL_TESTS)" ;; esac
done

# image size and contents each test expects (from its .sh wrapper / .c)
test_size() {
    case $1 in
    synch-parallel) echo $((8 * 1024 * 1024)) ;;
    *) echo $((64 * 1024 * 1024)) ;;
    esac
}
test_contents() {
    case $1 in
    aio-parallel-load) echo zero ;;
    *) echo pattern ;;
    esac
}

t_start=$(ext_now)
ext_need_pkgs libnbd-dev pkg-config gcc libc6-dev dpkg-dev perl

# --- fetch and build ---------------------------------------------------------

want_ver=$(dpkg-query -W -f='${source:Version}' libnbd-dev)
src=$EXT_CACHE/src/libnbd
ext_apt_source libnbd "$want_ver" "$src"
if [ "$EXT_SRC_VERSION" != "$want_ver" ]; then
    ext_say "warning: libnbd source $EXT_SRC_VERSION, installed libnbd-dev $want_ver"
fi

bld=$EXT_CACHE/build/libnbd
cc=${CC:-cc}
cflags="-O2 -g -Wall -pthread $(pkg-config --cflags libnbd)"
libs="$(pkg-config --libs libnbd) -pthread"
stamp="$EXT_SRC_VERSION|$(pkg-config --modversion libnbd)|$cc|$cflags|$libs"
if [ "$(cat "$bld/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$bld"
    mkdir -p "$bld"
    # The tests include <config.h> only for what autoconf found; the byte
    # swapping header needs to know these two headers exist.
    printf '#define HAVE_ENDIAN_H 1\n#define HAVE_BYTESWAP_H 1\n' >"$bld/config.h"
    for t in $ALL_TESTS; do
        # shellcheck disable=SC2086
        $cc $cflags -I"$bld" -I"$src/common/include" -I"$src/include" \
            -o "$bld/$t" "$src/tests/$t.c" $libs 2>"$bld/$t.build.log" || {
            sed 's/^/    /' "$bld/$t.build.log" >&2
            ext_fail_setup "cannot compile libnbd's tests/$t.c"
        }
    done
    printf '%s\n' "$stamp" >"$bld/.stamp"
fi
ext_say "libnbd $EXT_SRC_VERSION tests ready ($(ext_elapsed "$t_start") s)"

# --- run ---------------------------------------------------------------------

work=$(mktemp -d /tmp/rawnbd-libnbd.XXXXXX)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

make_image() { # FILE SIZE zero|pattern
    rm -f "$1"
    if [ "$3" = zero ]; then
        truncate -s "$2" "$1"
    else
        # word at offset i = i, big-endian: what nbdkit-pattern-plugin serves
        perl -e 'my ($n) = @ARGV; binmode STDOUT;
                 for (my $i = 0; $i < $n; $i += 65536) {
                     print pack("Q>*", map { $i + 8 * $_ } 0 .. 8191);
                 }' "$2" >"$1"
    fi
}

CLIENT_TIMEOUT=60 # s; each test runs 10 s
STALL_SLACK=15    # s over the 10 s a test may take (start, image, shutdown)
EXIT_TIMEOUT=20   # s rawnbd may take to exit after SIGTERM (its grace is 10 s)

# server_stacks PID: the server's thread stacks, when gdb is there
server_stacks() {
    command -v gdb >/dev/null || return 0
    echo "--- rawnbd thread stacks (gdb):"
    timeout 60 gdb -p "$1" -batch -ex 'thread apply all bt' 2>&1 |
        grep -E '^(Thread|#[0-9])' | head -n 60
}

passed=0
failed=0
for t in $TESTS; do
    t0=$(ext_now)
    img=$work/$t.img
    sock=$work/$t.sock
    slog=$work/$t.server.log
    clog=$work/$t.client.log
    make_image "$img" "$(test_size "$t")" "$(test_contents "$t")"
    reason=
    "$RAWNBD" -k "$sock" -t "$img" 2>"$slog" &
    server_pid=$!
    for _ in $(seq 200); do
        [ -S "$sock" ] && break
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    if [ ! -S "$sock" ]; then
        reason="rawnbd did not start listening on $sock"
    else
        # The test runs 10 s; a request that gets no reply stalls it.
        crc=0
        (cd "$work" && exec timeout -k 5 "$CLIENT_TIMEOUT" "$bld/$t" "$sock") \
            >"$clog" 2>&1 || crc=$?
        if [ "$crc" = 124 ] || [ "$crc" = 137 ]; then
            reason="$t still running after $CLIENT_TIMEOUT s (a 10 s test): requests got no reply"
            server_stacks "$server_pid" >>"$slog"
        elif [ "$crc" != 0 ]; then
            reason="$t exited with status $crc"
        elif [ "$(ext_elapsed "$t0" | cut -d. -f1)" -gt $((10 + STALL_SLACK)) ]; then
            reason="$t took $(ext_elapsed "$t0") s (a 10 s test): requests stalled"
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            reason="${reason:+$reason; }rawnbd died during the test"
        fi
    fi
    kill "$server_pid" 2>/dev/null || true
    rc=0
    for _ in $(seq $((EXIT_TIMEOUT * 10))); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        reason="${reason:+$reason; }rawnbd still running $EXIT_TIMEOUT s after SIGTERM"
        server_stacks "$server_pid" >>"$slog"
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" || rc=$?
    server_pid=
    if [ -z "$reason" ] && [ "$rc" -ne 0 ]; then
        reason="rawnbd exited with status $rc on SIGTERM"
    fi
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' "$slog"; then
        reason="${reason:+$reason; }sanitizer report in rawnbd's log"
    fi
    if [ -z "$reason" ]; then
        passed=$((passed + 1))
        printf 'PASS %s (%s s): %s\n' "$t" "$(ext_elapsed "$t0")" \
            "$(grep -E '^(I/O requests|bytes received):' "$clog" | tr '\n' ' ')"
    else
        failed=$((failed + 1))
        printf 'FAIL %s (%s s): %s\n' "$t" "$(ext_elapsed "$t0")" "$reason"
        echo "  --- $t output (last 40 lines):"
        tail -n 40 "$clog" | sed 's/^/    /'
        echo "  --- rawnbd log (last 80 lines):"
        tail -n 80 "$slog" | sed 's/^/    /'
    fi
done

ext_say "total $(ext_elapsed "$t_start") s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
