#!/bin/bash
# nbd-guest-scenario.sh VARIANT... - the kernel NBD client scenario.
#
# Runs INSIDE the VM started by run-in-vm.sh (nbd-kernel-test.sh drives it).
# For every variant it starts the NBD server in the guest, attaches the
# kernel client, builds an ext4 filesystem, writes files with checksums,
# trims, detaches, restarts the server, reattaches and checks the filesystem
# and the data.  The full log of variant V goes to $NBD_OUT/V.log; stdout
# gets one line per variant: "RESULT V PASS|FAIL SECONDS [reason]".
#
# Configuration (environment, set by nbd-kernel-test.sh):
#   NBD_SERVER_UNIX, NBD_SERVER_TCP  server command templates, with
#       {SOCK} {ADDR} {PORT} {IMG} {NAME} {PIDFILE} {DIR} {CACHE} {EXTRA}
#   NBD_CACHE_WB, NBD_CACHE_DIRECT   what {CACHE} becomes (normal / odirect)
#   NBD_SERVER_EXTRA      what {EXTRA} becomes
#   NBD_SERVER_ONESHOT=1  the server exits by itself when its last client
#                         leaves (otherwise it is stopped with SIGTERM)
#   NBD_OUT               directory for the logs (the scratch share)
#   NBD_IMG_SIZE (256M), NBD_FILES (300), NBD_CLIENT_TIMEOUT (60 s),
#   NBD_NETLINK (1; 0 = ioctl interface, -nonetlink), NBD_PORT (10809)

set -uo pipefail

: "${NBD_SERVER_UNIX:?}" "${NBD_OUT:?}"
NBD_SERVER_TCP=${NBD_SERVER_TCP:-}
NBD_CACHE_WB=${NBD_CACHE_WB:-}
NBD_CACHE_DIRECT=${NBD_CACHE_DIRECT:-}
NBD_SERVER_EXTRA=${NBD_SERVER_EXTRA:-}
NBD_SERVER_ONESHOT=${NBD_SERVER_ONESHOT:-0}
NBD_IMG_SIZE=${NBD_IMG_SIZE:-256M}
NBD_FILES=${NBD_FILES:-300}
NBD_CLIENT_TIMEOUT=${NBD_CLIENT_TIMEOUT:-60}
NBD_NETLINK=${NBD_NETLINK:-1}
NBD_PORT=${NBD_PORT:-10809}
EXPORT=kernel-test

log() { printf '[%6.1f] %s\n' "$(elapsed)" "$*"; }
elapsed() { echo "$(($(date +%s%N) - T0))" | awk '{ printf "%.1f", $1 / 1e9 }'; }

# Everything below runs in the subshell of one variant (run_variant), with
# its output in the variant's log.  fail() ends that subshell.

diagnostics() {
    echo "----- dmesg (nbd / EXT4 / I/O lines) -----"
    dmesg | grep -Ei 'nbd|ext4|jbd2|i/o|blk_update|block' | tail -n 60
    echo "----- server log ($W/server.log, last 60 lines) -----"
    tail -n 60 "$W/server.log" 2>/dev/null
    echo "-----"
}

fail() {
    log "FAIL: $*"
    echo "$*" >"$W/reason"
    diagnostics
    exit 1
}

# run TIMEOUT DESCRIPTION CMD...: log the command, run it with a time limit,
# fail the variant if it fails.
run() {
    local t=$1 what=$2 rc=0
    shift 2
    log "+ $*"
    timeout -k 5 "$t" "$@" || rc=$?
    if [ $rc -ne 0 ]; then
        [ $rc -eq 124 ] && fail "$what: timed out after ${t}s"
        fail "$what: exit status $rc"
    fi
}

check_dmesg() {
    local bad
    bad=$(dmesg | grep -E 'I/O error|EXT4-fs error' | head -n 20)
    [ -z "$bad" ] || fail "kernel reported errors ($1):"$'\n'"$bad"
}

# Replace the {PLACEHOLDERS} of the server template.  Paths are shell-quoted;
# {CACHE} and {EXTRA} are option lists and stay unquoted.
expand_template() {
    local t=$1
    t=${t//\{SOCK\}/$(printf '%q' "$SOCK")}
    t=${t//\{IMG\}/$(printf '%q' "$IMG")}
    t=${t//\{PIDFILE\}/$(printf '%q' "$W/server.pid")}
    t=${t//\{DIR\}/$(printf '%q' "$W")}
    t=${t//\{NAME\}/$EXPORT}
    t=${t//\{ADDR\}/127.0.0.1}
    t=${t//\{PORT\}/$NBD_PORT}
    t=${t//\{CACHE\}/$CACHE}
    t=${t//\{EXTRA\}/$NBD_SERVER_EXTRA}
    printf '%s' "$t"
}

# wait_for SECONDS CMD...: run CMD every 0.1 s until it succeeds; status 1
# if it still fails after SECONDS of wall-clock time (not a count of tries:
# under TCG on a loaded host every try is slow).
wait_for() {
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}

server_gone() { ! kill -0 "$SPID" 2>/dev/null; }

# Does the device have this size, in 512-byte sectors?
dev_sectors_are() { [ "$(cat "/sys/block/${DEV#/dev/}/size")" = "$1" ]; }

listening() {
    if [ "$TRANSPORT" = unix ]; then
        [ -S "$SOCK" ]
    else
        tcp_listening "$NBD_PORT"
    fi
}
listening_or_gone() { listening || server_gone; }

# Is something listening on TCP port $1 (IPv4 or IPv6)?
tcp_listening() {
    local hex
    hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }'
}

# Server-side connections: accepted unix sockets carry the listener's path
# (state 03 = connected); TCP sockets on the port in state 01 = established.
server_connections() {
    if [ "$TRANSPORT" = unix ]; then
        awk -v s="$SOCK" '$8 == s && $6 == "03" { n++ } END { print n + 0 }' /proc/net/unix
    else
        local hex
        hex=$(printf '%04X' "$NBD_PORT")
        cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
            awk -v p=":$hex" '$2 ~ p"$" && $4 == "01" { n++ } END { print n + 0 }'
    fi
}

start_server() {
    local tmpl cmd rc
    if [ "$TRANSPORT" = unix ]; then tmpl=$NBD_SERVER_UNIX; else tmpl=$NBD_SERVER_TCP; fi
    [ -n "$tmpl" ] || fail "no server template for transport $TRANSPORT"
    cmd=$(expand_template "$tmpl")
    rm -f "$SOCK" "$W/server.pid"
    echo "=== server start $(date +%T): $cmd" >>"$W/server.log"
    log "+ server: $cmd"
    (eval "exec $cmd") </dev/null >>"$W/server.log" 2>&1 &
    SPID=$!
    # Wait passively: connecting to probe would use up a one-shot server.
    wait_for 30 listening_or_gone
    if ! listening; then
        server_gone || fail "the server did not start listening within 30 s"
        rc=0
        wait "$SPID" || rc=$?
        fail "the server exited during startup (status $rc)"
    fi
    # A server that daemonizes: follow its pid file if the template has one.
    if [ -s "$W/server.pid" ] && ! kill -0 "$SPID" 2>/dev/null; then
        SPID=$(cat "$W/server.pid")
    fi
    log "server pid $SPID is listening"
}

# stop_server [KILL]: let a one-shot server exit by itself, otherwise
# terminate it.  With KILL, SIGKILL it at once (the crash variant).
stop_server() {
    local rc how=exited
    [ -n "${SPID:-}" ] || return 0
    if [ "${1:-}" = KILL ]; then
        log "+ kill -KILL $SPID"
        kill -KILL "$SPID" 2>/dev/null
        how=killed
    else
        if [ "$NBD_SERVER_ONESHOT" = 1 ] && ! wait_for 10 server_gone; then
            log "WARNING: one-shot server $SPID still running 10 s after its last client left"
        fi
        if ! server_gone; then
            log "+ kill -TERM $SPID"
            kill -TERM "$SPID" 2>/dev/null
            how=terminated
        fi
    fi
    if ! wait_for 10 server_gone; then
        kill -KILL "$SPID" 2>/dev/null
        fail "the server ignored SIGTERM for 10 s"
    fi
    rc=0
    wait "$SPID" 2>/dev/null || rc=$?
    log "server $how, status $rc"
    echo "=== server stop $(date +%T): $how, status $rc" >>"$W/server.log"
    SPID=
    case $rc in
    134 | 135 | 136 | 139) fail "the server crashed (status $rc = signal $((rc - 128)))" ;;
    esac
}

attach() {
    local args
    if [ "$TRANSPORT" = unix ]; then
        args=(-unix "$SOCK" "$DEV")
    else
        args=(127.0.0.1 "$NBD_PORT" "$DEV")
    fi
    args+=(-N "$EXPORT" -timeout "$NBD_CLIENT_TIMEOUT")
    [ "$CONNS" -gt 1 ] && args+=(-connections "$CONNS")
    [ -n "$BS" ] && args+=(-b "$BS")
    [ "$NBD_NETLINK" = 0 ] && args+=(-nonetlink)
    run 60 "nbd-client attach" nbd-client "${args[@]}"
    wait_for 10 dev_sectors_are $((IMG_BYTES / 512)) ||
        fail "$DEV has $(cat "/sys/block/${DEV#/dev/}/size") sectors, expected $((IMG_BYTES / 512))"
    local q=/sys/block/${DEV#/dev/}/queue
    log "attached: size=$IMG_BYTES logical_block_size=$(cat $q/logical_block_size)" \
        "discard_max_bytes=$(cat $q/discard_max_bytes)" \
        "flags=[$(tr '\n' ' ' </sys/kernel/debug/nbd/${DEV#/dev/}/flags 2>/dev/null)]"
    if [ -n "$BS" ] && [ "$(cat $q/logical_block_size)" != "$BS" ]; then
        fail "logical_block_size is $(cat $q/logical_block_size), expected $BS"
    fi
    if [ "$CONNS" -gt 1 ]; then
        local n
        n=$(server_connections)
        log "server-side connections: $n"
        [ "$n" -eq "$CONNS" ] || fail "expected $CONNS connections to the server, found $n"
    fi
}

# detach [mounted]: disconnect; unless the filesystem is still mounted
# (the size is cleared only when the last user closes the device), wait for
# the device to become empty.
detach() {
    run 60 "nbd-client detach" nbd-client -d "$DEV"
    [ "${1:-}" = mounted ] && return 0
    wait_detached
}
wait_detached() {
    wait_for 20 dev_sectors_are 0 || fail "$DEV still has a size 20 s after the detach"
}

# Write NBD_FILES files of 1 byte .. 64 KiB plus a few of 1-3 MiB, random
# content, in one perl process (spawning one process per file is slow under
# TCG).
write_files() {
    local dir=$1 n=$2 big=$3
    timeout -k 5 600 perl -e '
        my ($dir, $n, $big) = @ARGV;
        open(my $r, "<:raw", "/dev/urandom") or die "urandom: $!";
        srand(4242);
        my @sizes = map { 1 + int(rand(65536)) } 1 .. $n;
        push @sizes, map { (1 << 20) + int(rand(2 << 20)) } 1 .. $big;
        for my $i (0 .. $#sizes) {
            my $sub = sprintf("%s/d%02d", $dir, $i % 16);
            -d $sub or mkdir($sub) or die "mkdir $sub: $!";
            my $f = sprintf("%s/f%04d.bin", $sub, $i);
            open(my $w, ">:raw", $f) or die "$f: $!";
            my $left = $sizes[$i];
            while ($left > 0) {
                my $len = $left > 262144 ? 262144 : $left;
                sysread($r, my $buf, $len) == $len or die "urandom: short read";
                print $w $buf or die "write $f: $!";
                $left -= $len;
            }
            close($w) or die "close $f: $!";
        }' "$dir" "$n" "$big"
}

# Checksums of every file below the mount point, relative paths, sorted.
checksum_all() {
    (cd "$MNT" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

verify() {
    log "+ sha256sum -c ($1, $(wc -l <"$W/sums") files)"
    (cd "$MNT" && sha256sum -c --quiet --strict "$W/sums") >"$W/verify.out" 2>&1 ||
        fail "checksum mismatch $1:"$'\n'"$(head -n 20 "$W/verify.out")"
}

fsck_clean() {
    local rc=0
    log "+ e2fsck -fn $DEV ($1)"
    timeout -k 5 300 e2fsck -fn "$DEV" >"$W/fsck.out" 2>&1 || rc=$?
    sed 's/^/    /' "$W/fsck.out"
    [ $rc -eq 0 ] || fail "e2fsck -fn $1 exited with $rc"
}

# EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH: the filesystem stops
# doing I/O at once, as if the machine lost power, so that unmounting it after
# the server is gone does not retry every dirty page against a dead device.
shutdown_fs() {
    log "+ ext4 shutdown ioctl (no log flush) on $MNT"
    perl -e 'open(my $d, "<", $ARGV[0]) or die "$ARGV[0]: $!";
             my $flags = pack("L", 2);
             ioctl($d, 0x8004587D, $flags) or die "EXT4_IOC_SHUTDOWN: $!"' "$MNT" ||
        fail "EXT4_IOC_SHUTDOWN failed"
}

drop_caches() {
    sync
    blockdev --flushbufs "$DEV" 2>/dev/null
    echo 3 >/proc/sys/vm/drop_caches
}

cleanup_variant() {
    mountpoint -q "$MNT" 2>/dev/null && { umount "$MNT" 2>/dev/null || umount -l "$MNT"; }
    [ -e "/sys/block/${DEV#/dev/}" ] && [ "$(cat /sys/block/${DEV#/dev/}/size)" != 0 ] &&
        timeout 30 nbd-client -d "$DEV" >/dev/null 2>&1
    if [ -n "${SPID:-}" ] && kill -0 "$SPID" 2>/dev/null; then
        kill -KILL "$SPID" 2>/dev/null
        wait "$SPID" 2>/dev/null
    fi
    [ -n "${DISK:-}" ] && mountpoint -q "$DISK" && umount "$DISK"
    rm -f "$W/disk.img" 2>/dev/null
}

# Put the image on an ext4 filesystem in a brd RAM disk: tmpfs and the
# overlay root have no O_DIRECT, which --cache=none needs.
setup_direct_disk() {
    if [ ! -b /dev/ram0 ]; then
        run 30 "modprobe brd" modprobe brd rd_nr=1 rd_size=$((IMG_BYTES / 1024 + 65536))
    fi
    DISK=$W/disk
    mkdir -p "$DISK"
    run 60 "mkfs on /dev/ram0" mkfs.ext4 -F -q /dev/ram0
    run 30 "mount /dev/ram0" mount -t ext4 /dev/ram0 "$DISK"
    IMG=$DISK/disk.img
}

run_variant() {
    local v=$1
    TRANSPORT=unix CONNS=1 BS='' CRASH=0 CACHE=$NBD_CACHE_WB DISK=''
    case $v in
    unix) ;;
    multiconn) CONNS=4 ;;
    tcp) TRANSPORT=tcp ;;
    bs4096) BS=4096 ;;
    crash) CRASH=1 ;;
    odirect) CACHE=$NBD_CACHE_DIRECT ;;
    *) fail "unknown variant '$v'" ;;
    esac
    W=/run/nbdtest/$v
    rm -rf "$W"
    mkdir -p "$W/mnt"
    MNT=$W/mnt SOCK=$W/nbd.sock IMG=$W/disk.img SPID=
    IMG_BYTES=$(numfmt --from=iec "$NBD_IMG_SIZE")
    trap cleanup_variant EXIT
    log "variant $v: transport=$TRANSPORT connections=$CONNS blocksize=${BS:-default}" \
        "crash=$CRASH cache='$CACHE' device=$DEV image=$NBD_IMG_SIZE"
    dmesg -C

    [ "$v" = odirect ] && setup_direct_disk
    run 30 "create the image" truncate -s "$NBD_IMG_SIZE" "$IMG"

    # Phase 1: fresh filesystem, data, trim.
    start_server
    attach
    run 300 "mkfs.ext4" mkfs.ext4 -F -q "$DEV"
    run 60 "mount" mount -t ext4 "$DEV" "$MNT"
    log "+ writing $NBD_FILES small and 4 large files"
    write_files "$MNT" "$NBD_FILES" 4 || fail "writing the files failed"
    # Delete a fifth of the files (numbers ending in 0 or 7), so that fstrim
    # has freed blocks to discard between live ones.
    find "$MNT" -name 'f*[07].bin' -delete
    run 120 "sync" sync
    run 300 "fstrim" fstrim -v "$MNT"
    checksum_all >"$W/sums" || fail "sha256sum failed"
    log "$(wc -l <"$W/sums") files, $(du -sk "$MNT" | cut -f1) KiB"
    if [ "$CRASH" = 1 ]; then
        # The synced files must survive; these later ones may or may not.
        run 60 "sync after the checksums" sync
        mkdir -p "$MNT/late"
        log "+ writing 40 more files, not synced"
        write_files "$MNT/late" 40 1 || fail "writing the late files failed"
        check_dmesg "before the crash"
        # Kill the server while the late files are being written back, so
        # that it dies with requests in flight.
        log "+ sync & (the late files)"
        sync &
        local syncpid=$! w=0 i
        for ((i = 0; i < 300; i++)); do
            read -r _ w </sys/block/${DEV#/dev/}/inflight
            [ "$w" -gt 0 ] && break
            sleep 0.01
        done
        log "writes in flight at the kill: $w"
        stop_server KILL 2>/dev/null # no "Killed" job notice from bash
        shutdown_fs
        # Detach before the umount: a request the kernel had requeued after
        # the send failed would otherwise wait for the client timeout (the
        # disconnect fails every queued request at once).
        detach mounted
        wait $syncpid
        run 60 "umount after the crash" umount "$MNT"
        wait_detached
        # I/O errors are expected from here to the detach: the device's
        # server is gone.  Only phase 2 must be clean.
        log "kernel messages after the kill (expected, not counted):"
        dmesg | grep -E 'I/O error|EXT4-fs error|nbd' | tail -n 15 | sed 's/^/    /'
        dmesg -C
    else
        run 60 "umount" umount "$MNT"
        detach
        stop_server
        check_dmesg "phase 1"
    fi

    # Phase 2: a new server process on the same image.
    echo 3 >/proc/sys/vm/drop_caches
    start_server
    attach
    if [ "$CRASH" = 1 ]; then
        # Let the kernel replay the journal, as after a real crash.
        run 60 "mount (journal replay)" mount -t ext4 "$DEV" "$MNT"
        dmesg | grep -E 'EXT4-fs \(|recover' | sed 's/^/    /'
        log "late files that survived: $(find "$MNT/late" -type f 2>/dev/null | wc -l) of 41"
        rm -rf "$MNT/late"
        run 60 "umount" umount "$MNT"
    fi
    fsck_clean "after reconnect"
    run 60 "mount" mount -t ext4 "$DEV" "$MNT"
    verify "after reconnect"
    # Overwrite the middle of one file, append to another, re-read them
    # from the server after dropping every cache.
    local f1 f2
    f1=$(sed -n '5s/^[0-9a-f]*  //p' "$W/sums")
    f2=$(sed -n '9s/^[0-9a-f]*  //p' "$W/sums")
    dd if=/dev/urandom of="$MNT/$f1" bs=1k seek=1 count=3 conv=notrunc status=none &&
        head -c 100000 /dev/urandom >>"$MNT/$f2" || fail "modifying files failed"
    checksum_all >"$W/sums" || fail "sha256sum failed"
    run 60 "umount" umount "$MNT"
    drop_caches
    run 60 "mount" mount -t ext4 "$DEV" "$MNT"
    verify "after modify and remount"
    run 60 "umount" umount "$MNT"
    fsck_clean "at the end"
    detach
    stop_server
    check_dmesg "phase 2"
    trap - EXIT
    cleanup_variant
    log "variant $v passed"
}

# ---------------------------------------------------------------------------

[ "${VM_GUEST:-}" = 1 ] || { echo "$0: runs inside run-in-vm.sh" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: $0 VARIANT..." >&2; exit 2; }
mkdir -p "$NBD_OUT"
modprobe nbd nbds_max=8 || { echo "modprobe nbd failed" >&2; exit 1; }

idx=0
failed=0
for v in "$@"; do
    T0=$(date +%s%N)
    DEV=/dev/nbd$idx
    idx=$((idx + 1))
    rc=0
    (run_variant "$v") >"$NBD_OUT/$v.log" 2>&1 || rc=$?
    secs=$(elapsed)
    if [ $rc -eq 0 ]; then
        echo "RESULT $v PASS $secs"
    else
        reason=$(head -n 1 "/run/nbdtest/$v/reason" 2>/dev/null)
        echo "RESULT $v FAIL $secs ${reason:-exit status $rc}"
        failed=1
    fi
done
exit $failed
