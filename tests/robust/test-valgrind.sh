#!/bin/bash
# valgrind memcheck over one short session: nbdinfo, nbdcopy out and in,
# a few qemu-io commands, with the page cache and with --cache=none; no
# TLS.  The server runs as
#   valgrind --error-exitcode=9 --leak-check=full
#            --errors-for-leak-kinds=definite RAWNBD ...
# so any memcheck error or definite leak makes SIGTERM's exit status 9
# instead of 0 (srv_stop fails on it), and the report is printed.
# Needs a binary built without sanitizers (suite 'slow'; skipped for an
# ASan build).
#
# Both sessions use --aio=threads.  With Linux AIO (the default for
# cached reads, and --aio=native) the server takes completions from the
# ring the kernel maps (coro/linux-aio.c, laio_reap) rather than through
# io_getevents, so valgrind never learns that a read filled its buffer
# and reports every byte sent from it as uninitialised: noise that would
# hide real errors.
# shellcheck source=../interop/lib.sh
. "$(dirname "$0")/../interop/lib.sh"

need valgrind nbdinfo nbdcopy qemu-io
if grep -q __asan_init "$RAWNBD"; then
    echo "1..0 # SKIP $RAWNBD is built with ASan, which valgrind cannot run"
    exit 0
fi
REAL_RAWNBD=$RAWNBD

# Every rawnbd started through lib.sh (srv_start) goes under valgrind.
use_valgrind() {
    : >"$T/valgrind.log"
    cat >"$T/rawnbd-vg" <<EOF
#!/bin/sh
exec valgrind --quiet --error-exitcode=9 --leak-check=full \
    --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    --log-file="$T/valgrind.log" "$REAL_RAWNBD" "\$@"
EOF
    chmod +x "$T/rawnbd-vg"
    RAWNBD=$T/rawnbd-vg
}

report() {
    if grep -q '^==[0-9]*== ' "$T/valgrind.log" 2>/dev/null; then
        echo "--- valgrind ---" >&2
        cat "$T/valgrind.log" >&2
    fi
}

session() {
    local img=$T/disk.img copy=$T/copy.img back=$T/back.img
    use_valgrind
    mk_image "$img" 16M 0:1M 8M:2M
    srv_start unix "$img" -t "$@"
    trap 'report; kill_started' EXIT
    nbdinfo "$SRV_URI" >/dev/null
    nbdinfo --map "$SRV_URI" >/dev/null
    nbdcopy "$SRV_URI" "$copy"
    same_content "$img" "$copy" "nbdcopy out"
    mk_image "$back" 16M 2M:3M
    nbdcopy "$back" "$SRV_URI"
    qemu-io -f raw \
        -c 'write -P 0x55 12M 64k' -c 'read -P 0x55 12M 64k' \
        -c 'write -z 13M 128k' -c 'read -P 0 13M 128k' \
        -c 'discard 14M 1M' -c 'flush' -c 'write -f -P 0x66 15M 4k' -c 'write -z -u 14M 64k' \
        "$SRV_URI" >"$T/qemu-io.out"
    grep -q 'Pattern verification failed' "$T/qemu-io.out" &&
        fail "qemu-io: $(cat "$T/qemu-io.out")"
    srv_stop
    cmp -n $((12 * 1024 * 1024)) "$back" "$img" ||
        fail "the image differs from what nbdcopy wrote into it"
    # Errors and leaks are "==PID==" lines; "--PID--" ones are warnings
    # (such as a system call valgrind does not know).
    if grep -q '^==[0-9]*== ' "$T/valgrind.log"; then
        fail "valgrind reported errors"
    fi
}

page_cache() {
    session --aio=threads
}

direct() {
    dd if=/dev/zero of="$T/.direct" bs=4096 count=1 oflag=direct \
        status=none 2>/dev/null || skip "no O_DIRECT in $T"
    session --cache=none --aio=threads
}

tap_case valgrind-page-cache page_cache
tap_case valgrind-direct direct
tap_done
