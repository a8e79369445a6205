#!/bin/bash
# qemu-img and qemu-io (qemu's NBD client) against rawnbd, over TCP and
# unix sockets.
. "$(dirname "$0")/lib.sh"
need qemu-img qemu-io python3

# The URI qemu wants for the last server started.
qemu_uri() {
    local name=${1:-}
    if [ -n "$SRV_SOCK" ]; then
        echo "nbd+unix:///$name?socket=$SRV_SOCK"
    else
        echo "nbd://127.0.0.1:$SRV_PORT/$name"
    fi
}

json_field() {
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

info() {
    local kind=$1
    local img=$T/info-$kind.img out
    mk_image "$img" 64M 0:1M 10M:64K
    srv_start "$kind" "$img" -x disk
    out=$(qemu-img info --output=json "$(qemu_uri disk)")
    [ "$(json_field virtual-size <<<"$out")" = 67108864 ] ||
        fail "virtual size: $out"
    [ "$(json_field format <<<"$out")" = raw ] || fail "format: $out"
    srv_wait_exit
}

convert_from() {
    local kind=$1
    local img=$T/from-$kind.img
    mk_image "$img" 32M 0:1M 5M:3M 31M:1M
    srv_start "$kind" "$img" -r
    qemu-img convert -f raw -O raw "$(qemu_uri)" "$T/copy.img"
    srv_wait_exit
    same_content "$img" "$T/copy.img" "qemu-img convert from $kind"
}

convert_to() {
    local kind=$1
    local img=$T/to-$kind.img
    mk_image "$T/src.img" 32M 0:2M 7M:1M 20M:4M
    # The target starts with other data, which must all be replaced.
    mk_image "$img" 32M 0:32M
    srv_start "$kind" "$img"
    qemu-img convert -n -f raw -O raw "$T/src.img" "$(qemu_uri)"
    srv_wait_exit
    same_content "$T/src.img" "$img" "qemu-img convert to $kind"
}

compare() {
    local img=$T/cmp.img rc=0
    mk_image "$img" 16M 0:1M 8M:1M
    cp --sparse=always "$img" "$T/ref.img"
    srv_start unix "$img" -t
    qemu-img compare -f raw -F raw "$(qemu_uri)" "$T/ref.img" ||
        fail "qemu-img compare: images differ"
    qemu-io -f raw -c 'write -P 0x5a 12M 4k' "$(qemu_uri)" >/dev/null
    qemu-img compare -q -f raw -F raw "$(qemu_uri)" "$T/ref.img" || rc=$?
    [ "$rc" = 1 ] || fail "qemu-img compare after a write: status $rc, expected 1"
    srv_stop
}

# qemu-img map over NBD (block status) matches the file's holes.
map() {
    local img=$T/map.img
    mk_image "$img" 16M 0:64K 1M:4K 4M:512K 15M:1M
    srv_start unix "$img"
    qemu-img map --output=json -f raw "$(qemu_uri)" | map_of_json qemu >"$T/map.nbd"
    srv_wait_exit
    map_of_file "$img" >"$T/map.file"
    diff -u "$T/map.file" "$T/map.nbd" >&2 || fail "qemu-img map differs from the file's layout"
}

# qemu-io: writes with patterns, zeroes, discards, FUA, flush, async I/O,
# each verified with read -P.
io_patterns() {
    local img=$T/io.img out
    mk_image "$img" 16M 0:16M
    srv_start unix "$img"
    out=$(qemu-io -f raw "$(qemu_uri)" \
        -c 'write -P 0xab 0 1M' \
        -c 'read -P 0xab 0 1M' \
        -c 'write -z 1M 1M' \
        -c 'read -P 0 1M 1M' \
        -c 'write -z -u 2M 1M' \
        -c 'read -P 0 2M 1M' \
        -c 'discard 3M 1M' \
        -c 'write -f -P 0x11 4M 64k' \
        -c 'read -P 0x11 4M 64k' \
        -c 'write -P 0x22 5M 1' \
        -c 'write -P 0x33 5242881 4095' \
        -c 'read -P 0x22 5M 1' \
        -c 'read -P 0x33 5242881 4095' \
        -c 'aio_write -P 0x44 6M 256k' \
        -c 'aio_write -P 0x45 7M 256k' \
        -c 'aio_flush' \
        -c 'readv -P 0x44 6M 128k 128k' \
        -c 'read -P 0x45 7M 256k' \
        -c 'flush' 2>&1)
    echo "$out"
    if grep -qiE 'fail|error|mismatch' <<<"$out"; then
        fail "qemu-io reported a failure"
    fi
    srv_wait_exit
    # The discarded range reads as zeroes in the file too (holes).
    cmp -n 1048576 -i 3145728:0 "$img" /dev/zero ||
        fail "discarded range is not zero in the file"
    python3 - "$img" <<'EOF' || fail "file contents differ from what qemu-io wrote"
import sys
d = open(sys.argv[1], "rb").read()
M = 1 << 20
checks = [(0, M, 0xab), (M, M, 0), (2 * M, M, 0), (4 * M, 65536, 0x11),
          (5 * M, 1, 0x22), (5 * M + 1, 4095, 0x33), (6 * M, 256 << 10, 0x44),
          (7 * M, 256 << 10, 0x45)]
for off, n, b in checks:
    assert d[off:off + n] == bytes([b]) * n, "bytes at %d" % off
EOF
}

io_read_only() {
    local img=$T/ro.img out rc=0
    mk_image "$img" 4M 0:4M
    srv_start unix "$img" -r -t
    out=$(qemu-io -r -f raw "$(qemu_uri)" -c 'read 0 1M' 2>&1) || fail "read: $out"
    # qemu opens read-write and must be refused or fail the write.
    out=$(qemu-io -f raw "$(qemu_uri)" -c 'write -P 1 0 4k' 2>&1) || rc=$?
    echo "$out"
    grep -qiE 'read-only|not permitted|denied' <<<"$out" ||
        fail "a write to a read-only export did not fail (status $rc)"
    srv_stop
}

tap_case "qemu-img info over TCP" info tcp
tap_case "qemu-img info over a unix socket" info unix
tap_case "qemu-img convert from NBD (TCP)" convert_from tcp
tap_case "qemu-img convert from NBD (unix)" convert_from unix
tap_case "qemu-img convert to NBD (TCP)" convert_to tcp
tap_case "qemu-img convert to NBD (unix)" convert_to unix
tap_case "qemu-img compare" compare
tap_case "qemu-img map matches the holes" map
tap_case "qemu-io patterns, zeroes, discard, FUA, aio" io_patterns
tap_case "qemu-io on a read-only export" io_read_only
tap_done
