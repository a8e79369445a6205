#!/bin/bash
# fio's nbd engine against rawnbd: four jobs (one connection each) write
# random blocks with crc32c verification headers into their own 16 MiB,
# then read everything back and verify, under each cache/aio mode.
. "$(dirname "$0")/lib.sh"
need fio

fio_verify() {
    local img=$T/fio.img
    case " $* " in *" --cache=none "* | *" --cache=directsync "*) need_direct_io ;; esac
    mk_image "$img" 64M
    # -t: fio opens and closes connections while it sets jobs up.
    srv_start unix "$img" -t "$@"
    fio_verify_uri "$SRV_URI"
    srv_stop
}

tap_case "fio verify, --cache=writeback" fio_verify --cache=writeback
tap_case "fio verify, --cache=none --aio=native" fio_verify --cache=none --aio=native
tap_case "fio verify, --cache=none --aio=threads" fio_verify --cache=none --aio=threads
tap_case "fio verify, --aio=threads (page cache)" fio_verify --aio=threads
tap_case "fio verify, --cache=writethrough" fio_verify --cache=writethrough
tap_case "fio verify, --cache=directsync" fio_verify --cache=directsync
tap_done
