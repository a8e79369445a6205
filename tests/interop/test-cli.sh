#!/bin/bash
# rawnbd's command line: bad usage is one line on stderr and status 2, an
# image that cannot be served one line and status 1; --help, -V,
# --print-uri, several FILE arguments.
. "$(dirname "$0")/lib.sh"
need nbdinfo python3

usage_errors() {
    local img=$T/u.img sock=$T/u.sock
    truncate -s 1M "$img"
    mkdir -p "$T/a" "$T/b"
    truncate -s 1M "$T/a/x.img" "$T/b/x.img"
    local long
    long=$(head -c 5000 /dev/zero | tr '\0' n)
    expect_usage_error --bogus "$img"
    expect_usage_error -Z "$img"
    expect_usage_error --cache=bogus "$img"
    expect_usage_error --aio=bogus "$img"
    expect_usage_error --aio=native "$img"
    expect_usage_error --aio=native --cache=writeback "$img"
    expect_usage_error -p 99999 "$img"
    expect_usage_error -p 65536 "$img"
    expect_usage_error -p abc "$img"
    expect_usage_error -p -1 "$img"
    expect_usage_error -e x "$img"
    expect_usage_error -e -1 "$img"
    expect_usage_error --threads 0 "$img"
    expect_usage_error --threads x "$img"
    expect_usage_error --max-inflight 0 "$img"
    expect_usage_error --max-handshakes 0 "$img"
    expect_usage_error --handshake-limit -1 "$img"
    expect_usage_error --poll x "$img"
    expect_usage_error --poll -1 "$img"
    expect_usage_error --poll 1000001 "$img"
    expect_usage_error --discard=maybe "$img"
    expect_usage_error --log=nowhere "$img"
    expect_usage_error -o x "$img"
    expect_usage_error -o 1Q "$img"
    expect_usage_error -o -5 "$img"
    expect_usage_error -f qcow2 "$img"
    expect_usage_error -k
    expect_usage_error -p
    expect_usage_error
    expect_usage_error -k "$sock"
    expect_usage_error -x "$long" "$img"
    expect_usage_error -D "$long" "$img"
    expect_usage_error --socket "$sock" --unix "$T/other.sock" "$img"
    # Several FILEs are several exports; two may not share a name.
    expect_usage_error -k "$sock" "$img" "$T/a/x.img" "$T/b/x.img"
    expect_usage_error -k "$sock" --export=e="$img" --export=e="$img"
    expect_usage_error -k "$sock" --export=nofile
    expect_usage_error -k "$sock" -x name --export=e="$img"
    [ ! -e "$sock" ] || fail "a socket was created despite the usage error"
}

start_errors() {
    local img=$T/s.img sock=$T/s.sock
    truncate -s 1M "$img"
    expect_start_error "$T/missing.img" -k "$sock" "$T/missing.img"
    expect_start_error "$T/missing.img" -k "$sock" -r "$T/missing.img"
    expect_start_error "$T" -k "$sock" "$T"
    expect_start_error "$img" -k "$sock" -o 2M "$img"
    expect_start_error "$T/missing.img" -k "$sock" --export=e="$T/missing.img"
    expect_start_error "$T/no/such/dir" -k "$T/no/such/dir/s.sock" "$img"
}

help_lists_options() {
    local opt
    run_rawnbd --help
    [ "$RC" = 0 ] || fail "--help: status $RC"
    for opt in --socket --unix --port --bind --export-name --description \
        --read-only --offset --format --persistent --shared --cache \
        --nocache --aio --discard --threads --pin --poll --handshake-limit \
        --max-handshakes --max-inflight --fork --pid-file --log --print-uri \
        --verbose --version --help \
        -k, -U, -p, -b, -x, -D, -r, -o, -f, -t, -e, -n, -v, -V, -h,; do
        grep -qe "$opt" <<<"$OUT" || fail "--help does not list $opt"
    done
    run_rawnbd -h
    [ "$RC" = 0 ] && [ -n "$OUT" ] || fail "-h: status $RC"
}

version() {
    local v want="rawnbd ${RAWNBD_VERSION:-}"
    for v in -V --version; do
        run_rawnbd "$v"
        [ "$RC" = 0 ] || fail "$v: status $RC"
        # A -Dfault_injection=true build says so.
        [ "$OUT" = "$want" ] || [ "$OUT" = "$want (fault injection build)" ] ||
            fail "$v printed '$OUT', expected '$want'"
    done
}

# --print-uri: the line is a URI nbdinfo connects with, to the right export.
print_uri() {
    local img=$T/p.img uri name
    truncate -s 3M "$img"
    srv_start unix "$img" -t -x "my disk"
    [ "$SRV_URI" = "nbd+unix:///my%20disk?socket=$SRV_SOCK" ] ||
        fail "unix URI: $SRV_URI"
    name=$(nbdinfo --json "$SRV_URI" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["export-name"])')
    [ "$name" = "my disk" ] || fail "nbdinfo reached export '$name'"
    srv_stop
    srv_start tcp "$img" -t
    [ "$SRV_URI" = "nbd://127.0.0.1:$SRV_PORT/" ] || fail "TCP URI: $SRV_URI"
    [ "$(nbdinfo --size "$SRV_URI")" = 3145728 ] || fail "nbdinfo $SRV_URI"
    srv_stop
}

# No -b: all addresses; the URI names localhost.
print_uri_any_address() {
    local img=$T/p.img port
    truncate -s 1M "$img"
    port=$(free_port)
    srv_spawn -t -p "$port" "$img" || fail "status $SRV_RC: $(cat "$SRV_LOG")"
    [ "$SRV_URI" = "nbd://localhost:$port/" ] || fail "URI $SRV_URI"
    nbdinfo --size "$SRV_URI" >/dev/null || fail "nbdinfo $SRV_URI"
    srv_stop
}

# -p 0 takes any free port: then the URI must name the port it got.
print_uri_port_zero() {
    local img=$T/p.img
    truncate -s 1M "$img"
    if ! srv_spawn -t -b 127.0.0.1 -p 0 "$img"; then
        # Refusing port 0 as bad usage is fine too.
        [ "$SRV_RC" = 2 ] || fail "-p 0: status $SRV_RC: $(cat "$SRV_LOG")"
        return 0
    fi
    [[ $SRV_URI != *:0/* ]] || fail "-p 0 printed the URI $SRV_URI"
    nbdinfo --size "$SRV_URI" >/dev/null || fail "nbdinfo cannot use $SRV_URI"
    srv_stop
}

# Each further FILE is an export named after its last path component.
several_files() {
    local names
    truncate -s 1M "$T/first.img"
    mkdir -p "$T/dir"
    truncate -s 2M "$T/dir/second.img"
    # (srv_start puts its image argument last.)
    srv_start unix "$T/dir/second.img" -t "$T/first.img"
    names=$(nbdinfo --list --json "$SRV_URI" | python3 -c '
import json, sys
print(" ".join("%s=%d" % (e["export-name"] or "(default)", e["export-size"])
               for e in json.load(sys.stdin)["exports"]))')
    [ "$names" = "(default)=1048576 second.img=2097152" ] ||
        fail "exports: $names"
    srv_stop
}

# Polling off and at its greatest: the data goes both ways all the same.
poll_values() {
    local img=$T/poll.img p
    for p in 0 1000000; do
        rm -f "$T/poll.img" "$T/poll-out.img"
        head -c 4M /dev/urandom >"$T/poll-in.img"
        truncate -s 4M "$img"
        srv_start unix "$img" -t --poll "$p" --threads 2
        nbdcopy "$T/poll-in.img" "$SRV_URI" || fail "--poll $p: nbdcopy in"
        nbdcopy "$SRV_URI" "$T/poll-out.img" || fail "--poll $p: nbdcopy out"
        cmp -s "$T/poll-in.img" "$T/poll-out.img" ||
            fail "--poll $p: the copy differs"
        srv_stop
    done
}

tap_case "usage errors: status 2, one line" usage_errors
tap_case "start-up errors: status 1, one line naming the file" start_errors
tap_case "--help lists every option" help_lists_options
tap_case "-V prints the version" version
tap_case "--print-uri is a URI nbdinfo accepts" print_uri
tap_case "--print-uri without -b" print_uri_any_address
tap_case "--print-uri with -p 0" print_uri_port_zero
tap_case "several FILE arguments" several_files
tap_case "--poll 0 and --poll 1000000 serve" poll_values
tap_done
