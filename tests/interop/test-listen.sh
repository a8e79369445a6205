#!/bin/bash
# Where rawnbd listens: sockets passed by systemd (systemd-socket-activate),
# the mode and owner of its unix socket, and no socket left behind when
# start-up fails after it was created.
. "$(dirname "$0")/lib.sh"
need nbdinfo nbdcopy python3

# sa_start LISTEN... -- ARGS...: systemd-socket-activate with "-l LISTEN"
# for each address, starting "rawnbd --print-uri ARGS" (in its place, so
# SRV_PID becomes rawnbd) at the first connection.  Returns once every
# address listens.
sa_start() {
    local sa listen=() n
    sa=$(command -v systemd-socket-activate) ||
        skip "systemd-socket-activate is not installed (package systemd)"
    while [ "$1" != -- ]; do
        listen+=(-l "$1")
        shift
    done
    shift
    srv_launch "$sa" "${listen[@]}" -- "$RAWNBD" --print-uri "$@"
    for n in $(seq 200); do
        [ "$(grep -c '^Listening on' "$SRV_LOG")" -ge $((${#listen[@]} / 2)) ] &&
            return 0
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.05
    done
    cat "$SRV_LOG" >&2
    fail "systemd-socket-activate ${listen[*]} did not listen"
}

# expect_size URI BYTES: nbdinfo reaches URI and sees BYTES.
expect_size() {
    local got
    got=$(nbdinfo --size "$1") || fail "nbdinfo $1"
    [ "$got" = "$2" ] || fail "nbdinfo $1: size $got, expected $2"
}

# The passed unix socket is served, -k is ignored, the URI names the
# passed socket, and the socket stays at exit: it belongs to systemd.
activation_unix() {
    local img=$T/a.img sock=$T/passed.sock
    mk_image "$img" 4M
    mk_image "$T/src.img" 4M 0:4M
    sa_start "$sock" -- -t -k "$T/ignored.sock" "$img"
    expect_size "nbd+unix:///?socket=$sock" 4194304
    srv_wait_uri || fail "no URI: $(cat "$SRV_LOG")"
    [ "$SRV_URI" = "nbd+unix:///?socket=$sock" ] || fail "URI $SRV_URI"
    [ ! -e "$T/ignored.sock" ] || fail "-k was not ignored"
    nbdcopy "$T/src.img" "$SRV_URI" || fail "nbdcopy into $SRV_URI"
    srv_stop
    same_content "$T/src.img" "$img" "image written through the passed socket"
    [ -S "$sock" ] || fail "the passed socket was removed"
}

activation_tcp() {
    local img=$T/t.img port
    mk_image "$img" 2M
    port=$(free_port)
    sa_start "127.0.0.1:$port" -- -t "$img"
    expect_size "nbd://127.0.0.1:$port/" 2097152
    srv_wait_uri || fail "no URI: $(cat "$SRV_LOG")"
    [ "$SRV_URI" = "nbd://127.0.0.1:$port/" ] || fail "URI $SRV_URI"
    srv_stop
}

# Two passed sockets both serve; the URI names the first.
activation_two_sockets() {
    local img=$T/two.img port sock=$T/first.sock
    mk_image "$img" 1M
    port=$(free_port)
    sa_start "$sock" "127.0.0.1:$port" -- -t -x disk "$img"
    expect_size "nbd://127.0.0.1:$port/disk" 1048576
    expect_size "nbd+unix:///disk?socket=$sock" 1048576
    expect_size "nbd://127.0.0.1:$port/disk" 1048576
    srv_wait_uri || fail "no URI: $(cat "$SRV_LOG")"
    [ "$SRV_URI" = "nbd+unix:///disk?socket=$sock" ] || fail "URI $SRV_URI"
    [ "$(grep -c ': connected' "$SRV_LOG")" = 3 ] || fail "$(cat "$SRV_LOG")"
    srv_stop
}

# Without -t the server leaves with its last client, as under systemd.
activation_exits_after_client() {
    local img=$T/x.img sock=$T/x.sock
    mk_image "$img" 1M
    sa_start "$sock" -- "$img"
    expect_size "nbd+unix:///?socket=$sock" 1048576
    srv_wait_exit
}

# Under --tls=require the URI of the passed socket is nbds+unix, the
# export name percent-encoded.
activation_tls_uri() {
    local img=$T/s.img sock=$T/tls.sock psk
    mk_image "$img" 1M
    make_pki "$T/pki"
    psk=$T/pki/psk/keys.psk
    sa_start "$sock" -- -t -x "a b/c" --tls-psk "$psk" "$img"
    expect_size "nbds+unix://alice@/a%20b%2Fc?socket=$sock&tls-psk-file=$psk" 1048576
    srv_wait_uri || fail "no URI: $(cat "$SRV_LOG")"
    [ "$SRV_URI" = "nbds+unix:///a%20b%2Fc?socket=$sock" ] || fail "URI $SRV_URI"
    srv_stop
}

# LISTEN_PID naming another process: the variables are not for us.
activation_other_pid() {
    local img=$T/o.img
    mk_image "$img" 1M
    srv_launch env LISTEN_PID=1 LISTEN_FDS=1 "$RAWNBD" --print-uri -t \
        -k "$T/own.sock" "$img"
    srv_wait_uri || fail "rawnbd did not start: $(cat "$SRV_LOG")"
    expect_size "$SRV_URI" 1048576
    srv_stop
}

socket_mode() {
    local img=$T/m.img mode
    mk_image "$img" 1M
    for mode in 0600 0666 0660; do
        srv_start unix "$img" -t --socket-mode "$mode"
        [ "$(stat -c %a "$SRV_SOCK")" = "${mode#0}" ] ||
            fail "--socket-mode $mode gave $(stat -c %a "$SRV_SOCK")"
        expect_size "$SRV_URI" 1048576
        srv_stop
    done
}

# Another user connects with 0666 and not with 0600.
socket_mode_enforced() {
    local img=$T/m.img
    [ "$(id -u)" = 0 ] || skip "needs root to act as another user"
    command -v setpriv >/dev/null || skip "setpriv is not installed"
    id nobody >/dev/null 2>&1 || skip "no user nobody"
    chmod 0755 "$T" "$(dirname "$T")"
    mk_image "$img" 1M
    for mode in 0600 0666; do
        srv_start unix "$img" -t --socket-mode "$mode"
        if setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups \
            nbdinfo --size "$SRV_URI" >/dev/null 2>&1; then
            [ "$mode" = 0666 ] || fail "nobody connected through a $mode socket"
        else
            [ "$mode" = 0600 ] || fail "nobody could not connect through a $mode socket"
        fi
        srv_stop
    done
}

socket_owner() {
    local img=$T/o.img spec want
    id nobody >/dev/null 2>&1 || skip "no user nobody"
    [ "$(id -u)" = 0 ] || skip "needs root to give the socket away"
    local ngroup
    ngroup=$(id -gn nobody)
    mk_image "$img" 1M
    for spec in "nobody:$ngroup=nobody:$ngroup" "nobody=nobody:$ngroup" \
        "nobody:=nobody:$(id -gn)" ":$ngroup=$(id -un):$ngroup"; do
        want=${spec#*=}
        srv_start unix "$img" -t --socket-owner "${spec%%=*}" --socket-mode 0660
        [ "$(stat -c %U:%G "$SRV_SOCK")" = "$want" ] ||
            fail "--socket-owner ${spec%%=*}: owner $(stat -c %U:%G "$SRV_SOCK"), expected $want"
        [ "$(stat -c %a "$SRV_SOCK")" = 660 ] || fail "mode $(stat -c %a "$SRV_SOCK")"
        srv_stop
    done
}

socket_usage_errors() {
    local img=$T/u.img sock=$T/u.sock
    truncate -s 1M "$img"
    expect_usage_error -k "$sock" --socket-owner no-such-user-here "$img"
    expect_usage_error -k "$sock" --socket-owner nobody:no-such-group-here "$img"
    expect_usage_error -k "$sock" --socket-owner :no-such-group-here "$img"
    expect_usage_error --socket-mode 0600 "$img"
    expect_usage_error -p 10809 --socket-mode 0600 "$img"
    expect_usage_error --socket-owner nobody "$img"
    expect_usage_error -k "$sock" --socket-mode 0800 "$img"
    expect_usage_error -k "$sock" --socket-mode 010000 "$img"
    expect_usage_error -k "$sock" --socket-mode rw "$img"
    [ ! -e "$sock" ] || fail "a socket was created despite the usage error"
}

# Start-up fails after the unix socket was made: the socket must go too
# ("The socket is removed when the server exits").
no_socket_after_failed_start() {
    local img=$T/f.img sock=$T/f.sock bad=0
    truncate -s 1M "$img"
    touch "$T/not-a-socket"
    # The metrics endpoint cannot be opened.
    expect_start_error "$T/not-a-socket" -k "$sock" --metrics "$T/not-a-socket" "$img"
    if [ -e "$sock" ]; then
        echo "BUG: --metrics failure left $sock behind"
        bad=1
        rm -f "$sock"
    fi
    # The pid file cannot be written.
    run_rawnbd -k "$sock" --metrics "$T/m.sock" --pid-file "$T/no/dir/pid" "$img"
    echo "--pid-file in a missing directory: status $RC: $ERR"
    [ "$RC" = 1 ] || fail "status $RC, expected 1"
    if [ -e "$sock" ] || [ -e "$T/m.sock" ]; then
        echo "BUG: --pid-file failure left $(ls "$T"/*.sock) behind"
        bad=1
        rm -f "$sock" "$T/m.sock"
    fi
    # The owner cannot be set (no CAP_CHOWN).
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null &&
        setpriv --bounding-set=-chown true 2>/dev/null; then
        RC=0
        setpriv --bounding-set=-chown "$RAWNBD" -k "$sock" \
            --socket-owner nobody "$img" 2>"$T/err" || RC=$?
        echo "--socket-owner without CAP_CHOWN: status $RC: $(cat "$T/err")"
        [ "$RC" = 1 ] || fail "status $RC, expected 1"
        if [ -e "$sock" ]; then
            echo "BUG: --socket-owner failure left $sock behind"
            bad=1
        fi
    fi
    [ "$bad" = 0 ] || fail "a failed start left a socket behind"
}

tap_case "socket activation: unix socket" activation_unix
tap_case "socket activation: TCP" activation_tcp
tap_case "socket activation: two sockets" activation_two_sockets
tap_case "socket activation: exit after the last client" activation_exits_after_client
tap_case "socket activation: URI under TLS" activation_tls_uri
tap_case "LISTEN_PID of another process is ignored" activation_other_pid
tap_case "--socket-mode" socket_mode
tap_case "--socket-mode keeps other users out" socket_mode_enforced
tap_case "--socket-owner" socket_owner
tap_case "--socket-mode/--socket-owner usage errors" socket_usage_errors
tap_case "no socket left after a failed start" no_socket_after_failed_start
tap_done
