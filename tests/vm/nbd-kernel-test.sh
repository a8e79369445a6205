#!/bin/bash
# nbd-kernel-test.sh [VARIANT...] - test an NBD server with the Linux kernel
# NBD client, inside a VM (run-in-vm.sh), since the host has no nbd driver.
#
# Variants (default: unix multiconn tcp bs4096 crash; "all" adds odirect):
#   unix       unix socket, one connection
#   multiconn  unix socket, 4 connections (nbd-client -connections 4)
#   tcp        TCP on 127.0.0.1 inside the guest
#   bs4096     unix socket, nbd-client -b 4096 (4 KiB logical blocks)
#   crash      write, sync, write more, SIGKILL the server, restart it:
#              e2fsck -fn must be clean and the synced files intact
#   odirect    unix socket, the server with {CACHE} = $NBD_CACHE_DIRECT
#              (rawnbd/qemu-nbd: --cache=none --aio=native); the image sits
#              on ext4 in a RAM disk, because tmpfs has no O_DIRECT
#
# Each variant: start the server in the guest, attach, mkfs.ext4, mount,
# write ~300 files, checksum, fstrim, umount, detach, restart the server,
# attach, e2fsck -fn, verify, modify, remount, verify, e2fsck -fn, detach.
# Any "I/O error" or "EXT4-fs error" in dmesg fails the variant.
#
# Server (environment):
#   NBD_SERVER=rawnbd (default) | qemu-nbd | nbdkit   a preset, or set
#   NBD_SERVER_UNIX / NBD_SERVER_TCP to command templates (placeholders
#   {SOCK} {ADDR} {PORT} {IMG} {NAME} {PIDFILE} {DIR} {CACHE} {EXTRA}); the
#   server must stay in the foreground.  NBD_SERVER_ONESHOT=1 if it exits by
#   itself after its last client.  NBD_SERVER_EXTRA fills {EXTRA}.
#   RAWNBD: the rawnbd binary (default: build/server/rawnbd in the repo).
# Other knobs: NBD_ONE_VM=1 (all variants in one VM boot), NBD_IMG_SIZE,
#   NBD_FILES, NBD_CLIENT_TIMEOUT, NBD_NETLINK=0, NBD_LOG_DIR (kept logs;
#   default a temporary directory, removed when everything passed),
#   NBD_VM_TIMEOUT (seconds per VM, default 300), and run-in-vm.sh's VM_*.
#
# Output: one "PASS variant (N s)" / "FAIL variant (N s): reason" line per
# variant (a failure is followed by its log), then "N passed, N failed".
# Exit status: 0 all passed, 1 a failure, 77 the VM cannot run here.

set -euo pipefail

HERE=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
REPO=$(cd "$HERE/../.." && pwd)
RUN_IN_VM=$HERE/run-in-vm.sh
GUEST=$HERE/nbd-guest-scenario.sh
DEFAULT_VARIANTS="unix multiconn tcp bs4096 crash"
ALL_VARIANTS="$DEFAULT_VARIANTS odirect"

case ${1:-} in -h | --help)
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit 0 ;;
esac

variants=()
for a in "$@"; do
    case $a in
    all) read -r -a more <<<"$ALL_VARIANTS"; variants+=("${more[@]}") ;;
    unix | multiconn | tcp | bs4096 | crash | odirect) variants+=("$a") ;;
    *) echo "nbd-kernel-test: unknown variant '$a' (known: $ALL_VARIANTS, all)" >&2; exit 2 ;;
    esac
done
[ ${#variants[@]} -gt 0 ] || read -r -a variants <<<"$DEFAULT_VARIANTS"

# --- the server ------------------------------------------------------------

NBD_SERVER=${NBD_SERVER:-rawnbd}
packages=(nbd-client e2fsprogs util-linux perl-base)
if [ -z "${NBD_SERVER_UNIX:-}" ]; then
    case $NBD_SERVER in
    rawnbd)
        RAWNBD=${RAWNBD:-$REPO/build/server/rawnbd}
        case $RAWNBD in /*) ;; *) RAWNBD=$REPO/$RAWNBD ;; esac
        if [ ! -x "$RAWNBD" ]; then
            echo "nbd-kernel-test: rawnbd binary not found at $RAWNBD" >&2
            echo "  build it (meson compile -C build), set RAWNBD=PATH, or NBD_SERVER=qemu-nbd|nbdkit" >&2
            exit 2
        fi
        q=$(printf '%q' "$RAWNBD")
        NBD_SERVER_UNIX="$q -k {SOCK} -x {NAME} {CACHE} --discard=unmap {EXTRA} {IMG}"
        NBD_SERVER_TCP="$q -b {ADDR} -p {PORT} -x {NAME} {CACHE} --discard=unmap {EXTRA} {IMG}"
        : "${NBD_CACHE_WB=--cache=writeback}" "${NBD_CACHE_DIRECT=--cache=none --aio=native}"
        : "${NBD_SERVER_ONESHOT=1}"
        ;;
    qemu-nbd)
        packages+=(qemu-utils)
        NBD_SERVER_UNIX="qemu-nbd -f raw -k {SOCK} -x {NAME} -e 8 {CACHE} --discard=unmap {EXTRA} {IMG}"
        NBD_SERVER_TCP="qemu-nbd -f raw -b {ADDR} -p {PORT} -x {NAME} -e 8 {CACHE} --discard=unmap {EXTRA} {IMG}"
        : "${NBD_CACHE_WB=--cache=writeback}" "${NBD_CACHE_DIRECT=--cache=none --aio=native}"
        : "${NBD_SERVER_ONESHOT=1}"
        ;;
    nbdkit)
        # nbdkit keeps running after its clients leave: it gets SIGTERM.
        # Its file plugin's cache=none evicts the page cache (no O_DIRECT).
        packages+=(nbdkit)
        NBD_SERVER_UNIX="nbdkit -f -U {SOCK} -e {NAME} {EXTRA} file file={IMG} {CACHE}"
        NBD_SERVER_TCP="nbdkit -f -i {ADDR} -p {PORT} -e {NAME} {EXTRA} file file={IMG} {CACHE}"
        : "${NBD_CACHE_WB=}" "${NBD_CACHE_DIRECT=cache=none}"
        : "${NBD_SERVER_ONESHOT=0}"
        ;;
    *)
        echo "nbd-kernel-test: unknown NBD_SERVER '$NBD_SERVER' (rawnbd, qemu-nbd, nbdkit," \
            "or set NBD_SERVER_UNIX and NBD_SERVER_TCP)" >&2
        exit 2 ;;
    esac
else
    NBD_SERVER=custom
fi
export NBD_SERVER_UNIX NBD_SERVER_TCP="${NBD_SERVER_TCP:-}" \
    NBD_CACHE_WB="${NBD_CACHE_WB:-}" NBD_CACHE_DIRECT="${NBD_CACHE_DIRECT:-}" \
    NBD_SERVER_ONESHOT="${NBD_SERVER_ONESHOT:-0}"

# --- the VM ----------------------------------------------------------------

pkg_args=()
for p in "${packages[@]}"; do pkg_args+=(-p "$p"); done
rc=0
"$RUN_IN_VM" --prepare "${pkg_args[@]}" || rc=$?
[ $rc -eq 0 ] || exit $rc # 77: skip, loudly explained by run-in-vm.sh

if [ -n "${NBD_LOG_DIR:-}" ]; then
    mkdir -p "$NBD_LOG_DIR"
    logdir=$(readlink -f -- "$NBD_LOG_DIR")
    keep_logs=1
else
    logdir=$(mktemp -d "${TMPDIR:-/tmp}/nbd-kernel-test.XXXXXX")
    keep_logs=0
fi
export NBD_OUT=$logdir

vm_args=(-s "$logdir" -t "${NBD_VM_TIMEOUT:-300}")
for n in NBD_SERVER_UNIX NBD_SERVER_TCP NBD_CACHE_WB NBD_CACHE_DIRECT NBD_SERVER_ONESHOT \
    NBD_SERVER_EXTRA NBD_OUT NBD_IMG_SIZE NBD_FILES NBD_CLIENT_TIMEOUT NBD_NETLINK NBD_PORT; do
    vm_args+=(-E "$n")
done

echo "nbd-kernel-test: server $NBD_SERVER, variants ${variants[*]}, logs in $logdir"
echo "  unix template: $NBD_SERVER_UNIX"

passed=0
failed=0
# The guest prints "RESULT variant PASS|FAIL seconds [reason]".
report() {
    local v=$1 result=$2 secs=$3 reason=${4:-}
    if [ "$result" = PASS ]; then
        passed=$((passed + 1))
        echo "PASS $v (${secs} s in the guest)"
    else
        failed=$((failed + 1))
        echo "FAIL $v (${secs} s in the guest): $reason"
        if [ -f "$logdir/$v.log" ]; then
            sed 's/^/    | /' "$logdir/$v.log"
        fi
    fi
}

# run_vm VARIANT...: one VM boot for the given variants.
run_vm() {
    local out=$logdir/vm-$1.out rc=0 start end v seen tag name result secs reason
    start=$(date +%s)
    "$RUN_IN_VM" "${vm_args[@]}" "bash $(printf '%q' "$GUEST") $*" >"$out" 2>&1 || rc=$?
    end=$(date +%s)
    echo "  (VM for $*: $((end - start)) s wall, exit $rc)"
    if [ $rc -eq 77 ]; then
        cat "$out"
        exit 77
    fi
    for v in "$@"; do
        seen=0
        while read -r tag name result secs reason; do
            [ "$tag" = RESULT ] && [ "$name" = "$v" ] || continue
            seen=1
            report "$v" "$result" "$secs" "$reason"
        done <"$out"
        if [ $seen = 0 ]; then
            report "$v" FAIL "?" "no result from the VM (run-in-vm.sh exit $rc)"
            echo "    | --- VM output ---"
            tail -n 40 "$out" | sed 's/^/    | /'
        fi
    done
}

t_start=$(date +%s)
if [ "${NBD_ONE_VM:-0}" = 1 ]; then
    run_vm "${variants[@]}"
else
    for v in "${variants[@]}"; do
        run_vm "$v"
    done
fi
echo "nbd-kernel-test: $(($(date +%s) - t_start)) s in all"
echo "$passed passed, $failed failed"

if [ $failed -eq 0 ] && [ $keep_logs = 0 ]; then
    rm -rf "$logdir"
elif [ $failed -ne 0 ]; then
    echo "logs kept in $logdir"
fi
[ $failed -eq 0 ]
