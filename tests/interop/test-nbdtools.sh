#!/bin/bash
# libnbd's tools against rawnbd: nbdcopy both ways (one and four
# connections, with and without extents) and nbdinfo (capabilities in
# --json, --map against the file's holes, --list, --size, --can, --is).
. "$(dirname "$0")/lib.sh"
need nbdcopy nbdinfo python3

copy_both_ways() {
    local img=$T/server.img
    mk_image "$T/src.img" 32M 0:3M 10M:1M 17M:7M 31M:1M
    mk_image "$img" 32M 0:32M
    srv_start unix "$img" -t
    nbdcopy "$@" "$T/src.img" "$SRV_URI"
    nbdcopy "$@" "$SRV_URI" "$T/dst.img"
    srv_stop
    same_content "$T/src.img" "$img" "image after nbdcopy to the server $*"
    same_content "$T/src.img" "$T/dst.img" "copy from the server $*"
}

# nbdinfo --json, checked field by field (python reads the JSON).
check_json() {
    local want=$1
    nbdinfo --json "$SRV_URI" >"$T/info.json"
    python3 - "$T/info.json" "$want" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
want = json.loads(sys.argv[2])
bad = []
def expect(what, got, exp):
    if got != exp:
        bad.append("%s: %r, expected %r" % (what, got, exp))
expect("protocol", info["protocol"], "newstyle-fixed")
expect("TLS", info["TLS"], False)
expect("structured", info["structured"], True)
expect("number of exports", len(info["exports"]), 1)
e = info["exports"][0]
for k, v in want.items():
    expect(k, e.get(k), v)
if bad:
    print(json.dumps(info, indent=1))
    sys.exit("; ".join(bad))
EOF
}

info_json() {
    local img=$T/info.img
    mk_image "$img" 64M 0:1M
    srv_start unix "$img" -t -x disk -D "the test disk"
    check_json '{"export-name": "disk", "description": "the test disk",
        "contexts": ["base:allocation"], "is_rotational": false,
        "is_read_only": false, "can_cache": true, "can_df": true,
        "can_fast_zero": true, "can_flush": true, "can_fua": true,
        "can_multi_conn": true, "can_trim": true, "can_zero": true,
        "block_size_minimum": 1, "block_size_preferred": 4096,
        "block_size_maximum": 67108864, "export-size": 67108864}'
    srv_stop
}

info_json_read_only() {
    local img=$T/info.img
    mk_image "$img" 8M 0:1M
    srv_start unix "$img" -t -r
    check_json '{"export-name": "", "is_read_only": true,
        "can_trim": false, "can_zero": false, "can_fast_zero": false,
        "can_flush": true, "can_fua": true, "can_cache": true,
        "can_multi_conn": true, "can_df": true,
        "contexts": ["base:allocation"], "export-size": 8388608}'
    srv_stop
}

info_json_direct() {
    local img=$T/info.img
    need_direct_io
    mk_image "$img" 8M 0:1M
    srv_start unix "$img" -t --cache=none
    check_json '{"block_size_minimum": 512, "block_size_preferred": 4096,
        "block_size_maximum": 67108864, "export-size": 8388608}'
    srv_stop
}

info_misc() {
    local img=$T/misc.img out
    mk_image "$img" 5M 0:1M
    srv_start unix "$img" -t -x vol -D "described"
    [ "$(nbdinfo --size "$SRV_URI")" = 5242880 ] || fail "nbdinfo --size"
    nbdinfo --can multi-conn "$SRV_URI" || fail "--can multi-conn"
    nbdinfo --can trim "$SRV_URI" || fail "--can trim"
    nbdinfo --can fast-zero "$SRV_URI" || fail "--can fast-zero"
    if nbdinfo --is read-only "$SRV_URI"; then fail "--is read-only"; fi
    out=$(nbdinfo --list "$SRV_URI")
    echo "$out"
    grep -q 'export="vol"' <<<"$out" || fail "--list: no export vol"
    grep -q 'description: described' <<<"$out" || fail "--list: no description"
    srv_stop
}

# nbdinfo --map (block status) equals the file's data/hole layout, for
# aligned and unaligned layouts, and through an --offset window.
map() {
    local img=$T/map.img
    mk_image "$img" "$1" "${@:2}"
    srv_start unix "$img"
    nbdinfo --map --json "$SRV_URI" | map_of_json nbdinfo >"$T/map.nbd"
    srv_wait_exit
    map_of_file "$img" >"$T/map.file"
    diff -u "$T/map.file" "$T/map.nbd" >&2 || fail "nbdinfo --map differs from the file"
}

# A badly fragmented image: 4 KiB of data every 8 KiB, 12000 extents
# (more than one block status reply holds, and more segments than one
# READ reply splits into).
fragmented() {
    local img=$T/frag.img
    python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, 48 << 20)
for i in range(6000):
    os.pwrite(fd, os.urandom(16) * 256, i * 8192)
os.fsync(fd)
os.close(fd)' "$img"
    srv_start unix "$img" -t
    nbdinfo --map --json "$SRV_URI" | map_of_json nbdinfo >"$T/map.nbd"
    nbdcopy "$SRV_URI" "$T/copy1.img"
    nbdcopy --no-extents "$SRV_URI" "$T/copy2.img"
    srv_stop
    map_of_file "$img" >"$T/map.file"
    [ "$(wc -l <"$T/map.file")" -ge 12000 ] || fail "the image is not fragmented"
    diff -u "$T/map.file" "$T/map.nbd" >"$T/map.diff" ||
        fail "nbdinfo --map differs from the file: $(head -n 20 "$T/map.diff")"
    same_content "$img" "$T/copy1.img" "nbdcopy of the fragmented image"
    same_content "$img" "$T/copy2.img" "nbdcopy --no-extents of it"
}

# --cache=none with a size that is not a multiple of the direct I/O block:
# every byte must still reach the client (or the server must refuse to
# start), not leave a tail nobody can read.
unaligned_direct() {
    local img=$T/odd.img
    need_direct_io
    head -c $((1048576 + 100)) /dev/urandom >"$img"
    if ! srv_spawn -t -k "$T/odd.sock" --cache=none "$img"; then
        [ "$SRV_RC" = 1 ] || fail "status $SRV_RC: $(cat "$SRV_LOG")"
        return 0
    fi
    nbdcopy "$SRV_URI" "$T/copy.img" ||
        fail "nbdcopy from a --cache=none export of 1 MiB + 100 bytes failed"
    srv_stop
    cmp -n $((1048576 + 100)) "$img" "$T/copy.img" || fail "copy differs"
}

tap_case "nbdcopy both ways" copy_both_ways
tap_case "nbdcopy both ways, 4 connections" copy_both_ways --connections=4
tap_case "nbdcopy both ways, no extents" copy_both_ways --no-extents
tap_case "nbdcopy both ways, 4 connections, no extents, 8 requests" \
    copy_both_ways --connections=4 --no-extents --requests=8
tap_case "nbdinfo --json: every capability" info_json
tap_case "nbdinfo --json: read-only" info_json_read_only
tap_case "nbdinfo --json: --cache=none" info_json_direct
tap_case "nbdinfo --size --can --is --list" info_misc
tap_case "nbdinfo --map: holes" map 64M 0:64K 1M:4K 4M:512K 40M:8M 63M:1M
tap_case "nbdinfo --map: all data" map 8M 0:8M
tap_case "nbdinfo --map: all hole" map 8M
tap_case "12000 extents: nbdinfo --map and nbdcopy" fragmented
tap_case "nbdcopy from --cache=none, size not a multiple of 512" unaligned_direct
tap_case "nbdinfo --map: many extents" map 4M 0:4K 8K:4K 16K:4K 24K:4K \
    32K:4K 64K:64K 256K:4K 1M:12K 2M:4K 3M:1M
tap_done
