#!/bin/bash
# qemu-iotests.sh - QEMU's block-layer test suite, "check -nbd -raw", with
# rawnbd standing in for qemu-nbd.
#
# Fetches Debian's qemu source package (the version of the installed
# qemu-system-x86; its tests match the installed qemu-img/qemu-io/QEMU) and
# runs tests/qemu-iotests/check -nbd -raw with
#   QEMU_NBD_PROG = qemu-nbd-shim (beside this script: qemu-nbd's options
#                   mapped onto rawnbd's, see its header)
#   QEMU_PROG, QEMU_IMG_PROG, QEMU_IO_PROG, QSD_PROG = the installed ones.
# Debian's qemu-system-x86 ships without the "qtest" accelerator module the
# Python tests start QEMU with; this script builds just that module from the
# same source with the installed binary's package version (so QEMU accepts
# it; configure + one module, ~30 s once) and points QEMU_MODULE_DIR at it.
#
# check selects the tests that support raw over nbd; each then:
#   PASS  output as expected
#   PASS* output as expected but for QEMU's SHUTDOWN event and the reply to
#         "quit" coming in the other order (this QEMU build's ordering; the
#         same difference shows with qemu-nbd)
#   FAIL  differs, and the same test passes with the real qemu-nbd; or
#         rawnbd logged a sanitizer report, outlived check by 20 s (killed,
#         its thread stacks in its log) or the test hung (check is stopped
#         after $IOTESTS_TIMEOUT s, default 900)
#   SKIP  differs, but fails with the real qemu-nbd as well: not rawnbd's
#         doing (it is re-run with qemu-nbd to decide); or not run by check
#         for another reason than format/protocol
# A line per test says whether rawnbd served it ("rawnbd: N starts") or the
# test never starts the NBD server under test.
#
# Usage: qemu-iotests.sh [TEST...]   (default: all that check selects)
# Environment: RAWNBD, RAWNBD_EXTERNAL_CACHE, RAWNBD_REQUIRE_EXTERNAL (see
# lib.sh; with it, a missing qtest accelerator is a failure too),
# IOTESTS_JOBS (check -j, default 2), IOTESTS_TIMEOUT (s, default 900).
# Output: one line per selected test, the diff and rawnbd log of each
# failure, then "N passed, N failed, N skipped".  Run files (check's TAP
# output, scratch dir, rawnbd logs) stay in $RAWNBD_EXTERNAL_CACHE/run/qemu-iotests.
# Exit 0 all passed, 1 a failure, 77 skipped.

set -euo pipefail
EXT_NAME=qemu-iotests
. "$(dirname -- "$(readlink -f -- "$0")")/lib.sh"

t_start=$(ext_now)
ext_need_pkgs qemu-utils qemu-system-x86 qemu-system-common python3 dpkg-dev \
    gcc make ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev \
    libfdt-dev zlib1g-dev

QEMU_PROG=$(command -v qemu-system-x86_64) || ext_skip "no qemu-system-x86_64"
QEMU_IMG_PROG=$(command -v qemu-img)
QEMU_IO_PROG=$(command -v qemu-io)
QSD_PROG=$(command -v qemu-storage-daemon)
QEMU_NBD_REAL=${QEMU_NBD_REAL:-$(command -v qemu-nbd)}
export QEMU_PROG QEMU_IMG_PROG QEMU_IO_PROG QSD_PROG QEMU_NBD_REAL RAWNBD

# --- source ------------------------------------------------------------------

want_ver=$(dpkg-query -W -f='${source:Version}' qemu-system-x86)
utils_ver=$(dpkg-query -W -f='${source:Version}' qemu-utils)
[ "$want_ver" = "$utils_ver" ] ||
    ext_say "warning: qemu-system-x86 from qemu $want_ver, qemu-utils from $utils_ver"
src=$EXT_CACHE/src/qemu
ext_apt_source qemu "$want_ver" "$src"
[ "$EXT_SRC_VERSION" = "$want_ver" ] ||
    ext_say "warning: qemu source $EXT_SRC_VERSION, installed $want_ver: expect spurious differences"
iotests=$src/tests/qemu-iotests
ext_say "qemu $EXT_SRC_VERSION source ready ($(ext_elapsed "$t_start") s)"

# --- the qtest accelerator -----------------------------------------------------

qtest_works() { # [MODULE_DIR]
    printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' |
        QEMU_MODULE_DIR=${1:-} timeout 30 "$QEMU_PROG" -nodefaults -display none \
            -machine none -accel qtest -qtest null -qmp stdio 2>&1 |
        grep -q '"SHUTDOWN"'
}

modules=$EXT_CACHE/build/qemu-modules
qtest_note=
if qtest_works; then
    :
else
    # "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    pkgversion=$("$QEMU_PROG" --version | sed -n '1s/^[^(]*(\(.*\))[[:space:]]*$/\1/p')
    stamp="$EXT_SRC_VERSION|$pkgversion|$(readlink -f "$QEMU_PROG")"
    if [ "$(cat "$modules/.stamp" 2>/dev/null)" != "$stamp" ]; then
        t0=$(ext_now)
        ext_say "building QEMU's qtest accelerator module (package version '$pkgversion')"
        bld=$EXT_CACHE/build/qemu-qtest
        rm -rf "$bld" "$modules"
        mkdir -p "$bld"
        if (cd "$bld" &&
            "$src/configure" --target-list=x86_64-softmmu --enable-modules \
                --with-pkgversion="$pkgversion" --prefix=/usr \
                --libdir="/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)" \
                --disable-docs --disable-tools --disable-werror \
                --without-default-features --without-default-devices &&
            ninja accel-qtest-x86_64.so) >"$bld/build.log" 2>&1; then
            mkdir -p "$modules"
            cp "$bld/accel-qtest-x86_64.so" "$modules/"
            printf '%s\n' "$stamp" >"$modules/.stamp"
            ext_say "module built ($(ext_elapsed "$t0") s)"
        else
            tail -n 20 "$bld/build.log" | sed 's/^/    /' >&2
            qtest_note="could not build the qtest accelerator module (log: $bld/build.log)"
        fi
    fi
    if [ -z "$qtest_note" ]; then
        if qtest_works "$modules"; then
            export QEMU_MODULE_DIR=$modules
        else
            qtest_note="QEMU does not load the qtest module built in $modules"
        fi
    fi
    if [ -n "$qtest_note" ]; then
        ext_say "WARNING: $qtest_note: the tests that start QEMU cannot run (they will show as SKIP: fails with qemu-nbd too)"
    fi
fi

# --- run ---------------------------------------------------------------------

run=$EXT_CACHE/run/qemu-iotests
rm -rf "$run"
mkdir -p "$run/bin" "$run/logs"
# TEST_DIR and SOCK_DIR: short (unix socket paths), and free of the words the
# tests' output filters replace ("raw", "nbd", "qemu"...) and of characters
# some tests refuse (197, 215 want [-_a-zA-Z0-9/] only): not under the repo.
work=$(mktemp -d /tmp/iotests-XXXXXX)
trap 'rm -rf "$work"' EXIT
# check and its Python tests run "python3" from PATH: make it Debian's, the
# one the distribution's qemu is tested with (and that has python3-libnbd).
[ -x /usr/bin/python3 ] && ln -s /usr/bin/python3 "$run/bin/python3"

# run_check LABEL NBD_PROG TEST...: check -tap -nbd -raw into $run/LABEL.tap,
# with TEST_DIR $work/LABEL (LABEL: "server" or "reference")
run_check() {
    local label=$1 prog=$2
    shift 2
    mkdir -p "$work/$label" "$work/$label-sock"
    (
        cd "$iotests" &&
            PATH=$run/bin:$PATH QEMU_NBD_PROG=$prog TEST_DIR=$work/$label \
                SOCK_DIR=$work/$label-sock RAWNBD_SHIM_LOG_DIR=$run/logs \
                RAWNBD_SHIM_TRACE=$run/shim-trace RAWNBD_SHIM_PIDS=$run/shim-pids \
                PYTHONUNBUFFERED=1 timeout -k 10 "$CHECK_TIMEOUT" \
                python3 ./check -tap -j "${IOTESTS_JOBS:-2}" -nbd -raw "$@"
    ) >"$run/$label.tap" 2>&1 || true
}

# the reference output check compares with (testrunner's find_reference)
reference() { # NAME (path below qemu-iotests)
    local t=$iotests/$1
    [ -f "$t.out.raw" ] && { echo "$t.out.raw"; return; }
    [ -f "$t.pc.out" ] && { echo "$t.pc.out"; return; }
    echo "$t.out"
}

# the output with each SHUTDOWN event line put after the {"return": {}} line
# right after it, i.e. in the order the reference outputs expect
quit_order_fixed() { # FILE
    awk '
        held != "" && /^\{"return": \{\}\}$/ { print; print held; held = ""; next }
        held != "" { print held; held = "" }
        /"event": "SHUTDOWN"/ { held = $0; next }
        { print }
        END { if (held != "") print held }
    ' "$1"
}

# FILE: "STATUS NAME" per test: ok, skip, fail, or hung (started, no result:
# check was killed at $CHECK_TIMEOUT)
tap_status() {
    awk '
        /^# running [^ ]+ [^ ]+$/ { started[$4] = 1; next }
        /^ok [^ ]+ [^ ]+ # SKIP/ { print "skip", $3; done[$3] = 1; next }
        /^ok [^ ]+ [^ ]+$/ { print "ok", $3; done[$3] = 1; next }
        /^not ok [^ ]+ [^ ]+/ { print "fail", $4; done[$4] = 1; next }
        END { for (t in started) if (!(t in done)) print "hung", t }
    ' "$1"
}

# the not-run reason check left in the scratch dir
notrun_reason() { # LABEL NAME
    local f
    for f in "$work/$1/${2##*/}.notrun" "$work/$1/${2##*/}/${2##*/}.notrun"; do
        [ -f "$f" ] && { head -n1 "$f"; return; }
    done
    echo "not run"
}

# Tests whose expected output shows qemu-nbd behaviour that the NBD protocol
# does not ask for.  Such a test counts as SKIP (with this reason) when it ran
# to its end ("*** done") and printed no error; otherwise it is a FAIL.
declare -A QEMU_NBD_SPECIFIC=(
    [241]="expects qemu-nbd's rounding of an unaligned raw image up to whole sectors (1000-byte file exported as 1024 bytes; with the format probed, also a 512-byte minimum block and qemu's probing warning on stderr); rawnbd exports the file's real 1000 bytes, which the protocol allows and the clients handle (the test's own comment calls the rounding noncompliance)"
)

CHECK_TIMEOUT=${IOTESTS_TIMEOUT:-900} # s for one check run (warm: about 70 s)

t_run=$(ext_now)
run_check server "$EXT_DIR/qemu-nbd-shim" "$@"
tap_status "$run/server.tap" >"$run/server.status"
grep -q . "$run/server.status" || {
    tail -n 30 "$run/server.tap" | sed 's/^/    /' >&2
    ext_fail_setup "check ran no test (output: $run/server.tap)"
}
ext_say "check -nbd -raw with rawnbd: $(ext_elapsed "$t_run") s"

# how many times rawnbd was started for a test (from the shim's trace)
rawnbd_starts() { # NAME
    awk -F'\t' -v n="${1##*/}" '$1 == n && index($3, ENVIRON["RAWNBD"]) == 1' \
        "$run/shim-trace" 2>/dev/null | grep -c . || true
}

# "PID NAME" of the servers the shim started that are still running
servers_running() {
    local pid n
    [ -f "$run/shim-pids" ] || return 0
    while read -r pid n; do
        [ -r "/proc/$pid/cmdline" ] || continue
        [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n1)" = "$RAWNBD" ] || continue
        [ "$(awk '{ print $3 }' "/proc/$pid/stat")" != Z ] || continue
        echo "$pid $n"
    done <"$run/shim-pids"
}

# Servers that outlive check: each test stops its own (SIGTERM, or SIGKILL
# from the Python tests) and rawnbd has 10 s of grace for requests in flight.
# One still running 20 s after check ended is reported against its test,
# with its thread stacks, and killed.
declare -A outlived
for _ in $(seq 40); do
    [ -n "$(servers_running)" ] || break
    sleep 0.5
done
while read -r pid n; do
    [ -n "$pid" ] || continue
    outlived[$n]+="$pid "
    {
        echo "=== $(date '+%T'): pid $pid still running 20 s after check ended"
        if command -v gdb >/dev/null; then
            timeout 60 gdb -p "$pid" -batch -ex 'thread apply all bt' 2>&1 |
                grep -E '^(Thread|#[0-9])' | head -n 60
        fi
    } >>"$run/logs/$n.rawnbd.log"
    kill -KILL "$pid" 2>/dev/null || true
done < <(servers_running)

# PASS   passed, with rawnbd serving
# PASS*  passed but for the quit ordering, with rawnbd serving
# FAIL   failed with rawnbd, passes with qemu-nbd; or rawnbd's log has a
#        sanitizer report; or its rawnbd outlived check; or it hung
# SKIP   not run by check (for another reason than format/protocol), or
#        failed in a way that is not rawnbd's (see the note)
# N/A    never starts the NBD server under test: passed or failed, it says
#        nothing about rawnbd (QEMU's built-in NBD server, a fake server...)
declare -A result note
suspects=() plain_fails=() # plain_fails: failures that need no re-run
while read -r st t; do
    name=${t##*/}
    if [ "$st" = skip ]; then
        reason=$(notrun_reason server "$t")
        case $reason in
        "not suitable for this image format"* | "not suitable for this image protocol"* | \
            "not suitable for this protocol"*) continue ;; # not selected
        esac
        result[$t]=SKIP
        note[$t]="not run: $reason"
        continue
    fi
    starts=$(rawnbd_starts "$t")
    if [ "$starts" -eq 0 ]; then
        result[$t]=N/A
        note[$t]="never starts the NBD server under test"
        [ "$st" = ok ] || note[$t]+="; $([ "$st" = hung ] && echo "did not finish" || echo failed) (not rawnbd's doing)"
        continue
    fi
    note[$t]="rawnbd started $starts time(s)"
    # a sanitizer build of rawnbd reports to its log, which no test reads
    if grep -qE 'ERROR: (Address|Leak|Thread)Sanitizer|runtime error:' \
        "$run/logs/$name.rawnbd.log" 2>/dev/null; then
        result[$t]=FAIL
        note[$t]+="; sanitizer report in rawnbd's log"
        plain_fails+=("$t")
        continue
    fi
    if [ -n "${outlived[$name]:-}" ]; then
        result[$t]=FAIL
        note[$t]+="; rawnbd (pid ${outlived[$name]% }) still running 20 s after check ended: killed"
        plain_fails+=("$t")
        continue
    fi
    if [ "$st" = hung ]; then
        result[$t]=FAIL
        note[$t]+="; did not finish: check was stopped after $CHECK_TIMEOUT s"
        plain_fails+=("$t")
        continue
    fi
    if [ "$st" = ok ]; then
        result[$t]=PASS
        continue
    fi
    bad=$(ext_first_file "$work/server/$name.out.bad" "$work/server/$name/$name.out.bad")
    if [ -n "$bad" ]; then
        diff -u "$(reference "$t")" "$bad" >"$run/$name.diff" || true
    fi
    if [ -n "$bad" ] && quit_order_fixed "$bad" | cmp -s - "$(reference "$t")"; then
        result[$t]=PASS*
        note[$t]+="; QEMU sent its SHUTDOWN event before the reply to quit"
    elif [ -n "${QEMU_NBD_SPECIFIC[$name]:-}" ] && [ -n "$bad" ] &&
        [ "$(tail -n1 "$bad")" = "*** done" ] &&
        ! grep -qiE 'error|fail|abort|assert' "$bad"; then
        result[$t]=SKIP
        note[$t]+="; qemu-nbd-specific: ${QEMU_NBD_SPECIFIC[$name]}"
    else
        result[$t]=FAIL
        suspects+=("$t")
    fi
done <"$run/server.status"

# Is a failure rawnbd's?  Not if the test fails with qemu-nbd as well.
if [ ${#suspects[@]} -gt 0 ]; then
    t0=$(ext_now)
    run_check reference "$QEMU_NBD_REAL" "${suspects[@]}"
    while read -r st t; do
        case $st in
        fail | skip)
            result[$t]=SKIP
            note[$t]+="; fails with the real qemu-nbd as well: not rawnbd's doing" ;;
        esac
    done < <(tap_status "$run/reference.tap")
    ext_say "re-ran ${#suspects[@]} failing test(s) with qemu-nbd: $(ext_elapsed "$t0") s"
fi

passed=0 failed=0 skipped=0 na=0
while read -r st t; do
    [ -n "${result[$t]:-}" ] || continue
    case ${result[$t]} in
    PASS*) passed=$((passed + 1)) ;;
    FAIL) failed=$((failed + 1)) ;;
    SKIP) skipped=$((skipped + 1)) ;;
    N/A) na=$((na + 1)) ;;
    esac
    printf '%-5s %-22s %s\n' "${result[$t]}" "$t" "${note[$t]:-}"
done < <(sort -k2 "$run/server.status")

for t in "${plain_fails[@]}" "${suspects[@]}"; do
    [ "${result[$t]}" = FAIL ] || continue
    name=${t##*/}
    echo "======== FAIL $t: ${note[$t]}"
    [ -f "$run/$name.diff" ] && sed 's/^/    /' "$run/$name.diff" | head -n 80
    f=$run/logs/$name.rawnbd.log
    if [ -f "$f" ]; then
        echo "  ---- rawnbd log ($f, last 40 lines):"
        tail -n 40 "$f" | sed 's/^/    /'
    fi
done

ext_say "total $(ext_elapsed "$t_start") s; files in $run"
if [ -n "$qtest_note" ]; then
    ext_say "WARNING: $qtest_note"
    if [ "${RAWNBD_REQUIRE_EXTERNAL:-0}" = 1 ]; then
        ext_say "RAWNBD_REQUIRE_EXTERNAL=1: counting that as a failure"
        failed=$((failed + 1))
    fi
fi
ext_say "$na test(s) N/A: selected by check but never start the server under test"
echo "$passed passed, $failed failed, $((skipped + na)) skipped"
[ "$failed" -eq 0 ]
