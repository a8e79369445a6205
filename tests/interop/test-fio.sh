#!/bin/bash
# fio's nbd engine against rawnbd: four jobs (one connection each) write
# random blocks with crc32c verification headers into their own 16 MiB,
# then read everything back and verify, under each cache/aio mode.
. "$(dirname "$0")/lib.sh"
need fio

fio_verify() {
    local img=$T/fio.img out rc=0
    case " $* " in *" --cache=none "* | *" --cache=directsync "*) need_direct_io ;; esac
    mk_image "$img" 64M
    # -t: fio opens and closes connections while it sets jobs up.
    srv_start unix "$img" -t "$@"
    out=$(cd "$T" && fio --name=verify --verify_state_save=0 --ioengine=nbd --uri="$SRV_URI" \
        --rw=randwrite --bsrange=4k-64k --size=16M --numjobs=4 \
        --offset_increment=16M --iodepth=32 --verify=crc32c \
        --verify_fatal=1 --do_verify=1 --group_reporting 2>&1) || rc=$?
    echo "$out"
    [ "$rc" = 0 ] || fail "fio exited with status $rc"
    if grep -qE 'verify: bad|err= *[1-9]|crc32c: verify failed' <<<"$out"; then
        fail "fio reported an error"
    fi
    srv_stop
}

tap_case "fio verify, --cache=writeback" fio_verify --cache=writeback
tap_case "fio verify, --cache=none --aio=native" fio_verify --cache=none --aio=native
tap_case "fio verify, --cache=none --aio=threads" fio_verify --cache=none --aio=threads
tap_case "fio verify, --aio=threads (page cache)" fio_verify --aio=threads
tap_case "fio verify, --cache=writethrough" fio_verify --cache=writethrough
tap_case "fio verify, --cache=directsync" fio_verify --cache=directsync
tap_done
