#!/bin/bash
# TLS with real clients: qemu-img over X.509 (unix socket and TCP) and
# PSK, nbdcopy both ways, several connections at once (nbdcopy, fio),
# and the credential errors that stop the server at start-up.
. "$(dirname "$0")/lib.sh"
need nbdinfo nbdcopy python3

# pki: credentials for the running case in $T/pki.
pki() {
    make_pki "$T/pki"
    PKI=$T/pki
}

# Start-up: credentials that cannot be used are one line and status 1;
# TLS options that contradict each other are bad usage, status 2.
startup_errors() {
    local img=$T/e.img sock=$T/e.sock
    truncate -s 1M "$img"
    pki
    mkdir -p "$T/nokey" "$T/noca"
    cp "$PKI/server/server-cert.pem" "$PKI/server/ca-cert.pem" "$T/nokey/"
    cp "$PKI/server/server-cert.pem" "$PKI/server/server-key.pem" "$T/noca/"
    expect_start_error server-key.pem -k "$sock" --tls-certificates "$T/nokey" "$img"
    expect_start_error ca-cert.pem -k "$sock" --tls-certificates "$T/noca" \
        --tls-verify-peer "$img"
    expect_start_error BOGUS -k "$sock" --tls-certificates "$PKI/server" \
        --tls-priority BOGUS "$img"
    expect_start_error "$T/none.psk" -k "$sock" --tls-psk "$T/none.psk" "$img"
    expect_usage_error -k "$sock" --tls=on "$img"
    expect_usage_error -k "$sock" --tls=require "$img"
    expect_usage_error -k "$sock" --tls=maybe --tls-psk "$PKI/psk/keys.psk" "$img"
    expect_usage_error -k "$sock" --tls-verify-peer --tls-psk "$PKI/psk/keys.psk" "$img"
    expect_usage_error -k "$sock" --export "s=$img,tls-only" "$img"
    [ ! -e "$sock" ] || fail "a socket was left behind"
    # Without ca-cert.pem, --tls-certificates alone is fine.
    srv_start unix "$img" -t --tls-certificates "$T/noca"
    nbdinfo --size "nbds+unix:///?socket=$SRV_SOCK&tls-certificates=$PKI/client" >/dev/null ||
        fail "nbdinfo over TLS without ca-cert.pem on the server"
    srv_stop
}

# qemu-img with tls-creds-x509 over the unix socket (tls-hostname) and
# over TCP to 127.0.0.1 (checked against the certificate's address).
qemu_x509() {
    need qemu-img
    local img=$T/x.img src=$T/src.img out=$T/out.img port obj opts
    pki
    mk_image "$img" 8M
    mk_image "$src" 8M 0:1M 3M:512K 7M:1M
    port=$(free_port)
    srv_start unix "$img" -t --tls-certificates "$PKI/server" -b 127.0.0.1 -p "$port"
    obj=tls-creds-x509,id=tls0,dir=$PKI/client,endpoint=client
    for opts in "driver=nbd,path=$SRV_SOCK,tls-creds=tls0,tls-hostname=localhost" \
        "driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0"; do
        qemu-img info --object "$obj" --image-opts "$opts" >"$T/info" ||
            fail "qemu-img info $opts"
        grep -q '(8388608 bytes)' "$T/info" || fail "qemu-img info: $(cat "$T/info")"
    done
    qemu-img convert -n --object "$obj" -f raw "$src" --target-image-opts \
        "driver=nbd,path=$SRV_SOCK,tls-creds=tls0,tls-hostname=localhost" ||
        fail "qemu-img convert into the export"
    same_content "$src" "$img" "image after qemu-img convert over TLS"
    qemu-img convert --object "$obj" --image-opts \
        "driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0" -O raw "$out" ||
        fail "qemu-img convert out of the export"
    same_content "$src" "$out" "copy made by qemu-img over TLS"
    # Without credentials QEMU is told that TLS is required.
    if qemu-img info --image-opts "driver=nbd,path=$SRV_SOCK" >"$T/plain" 2>&1; then
        fail "qemu-img without TLS got in"
    fi
    grep -qi tls "$T/plain" || fail "qemu-img without TLS: $(cat "$T/plain")"
    srv_stop
}

qemu_psk() {
    need qemu-img
    local img=$T/p.img src=$T/src.img out=$T/out.img obj opts
    pki
    mk_image "$img" 4M
    mk_image "$src" 4M 1M:2M
    srv_start unix "$img" -t --tls-psk "$PKI/psk/keys.psk"
    obj=tls-creds-psk,id=tls0,dir=$PKI/psk,username=alice,endpoint=client
    opts="driver=nbd,path=$SRV_SOCK,tls-creds=tls0"
    qemu-img info --object "$obj" --image-opts "$opts" | grep -q '(4194304 bytes)' ||
        fail "qemu-img info over PSK"
    qemu-img convert -n --object "$obj" -f raw "$src" --target-image-opts "$opts" ||
        fail "qemu-img convert into the export over PSK"
    qemu-img convert --object "$obj" --image-opts "$opts" -O raw "$out" ||
        fail "qemu-img convert out of the export over PSK"
    same_content "$src" "$img" "image after qemu-img convert over PSK"
    same_content "$src" "$out" "copy made by qemu-img over PSK"
    grep -q "PSK identity 'alice'" "$SRV_LOG" || fail "no PSK identity in the log"
    srv_stop
}

# nbdcopy into the export and out again, X.509 on the unix socket and PSK
# over TCP, with checksums.
nbdcopy_both_ways() {
    local img=$T/c.img src=$T/src.img out port uri
    pki
    mk_image "$src" 16M 0:4M 9M:3M 15M:1M
    for uri in x509 psk; do
        mk_image "$img" 16M
        out=$T/out-$uri.img
        if [ "$uri" = x509 ]; then
            srv_start unix "$img" -t --tls-certificates "$PKI/server"
            uri="nbds+unix:///?socket=$SRV_SOCK&tls-certificates=$PKI/client"
        else
            srv_start tcp "$img" -t --tls-psk "$PKI/psk/keys.psk"
            uri="nbds://alice@127.0.0.1:$SRV_PORT/?tls-psk-file=$PKI/psk/keys.psk"
        fi
        nbdcopy "$src" "$uri" || fail "nbdcopy into $uri"
        nbdcopy "$uri" "$out" || fail "nbdcopy out of $uri"
        same_content "$src" "$img" "image after nbdcopy into $uri"
        same_content "$src" "$out" "nbdcopy out of $uri"
        srv_stop
    done
}

# Several TLS connections at once: nbdcopy with 4 connections and 16
# requests each both ways, and fio's verifying writers (libnbd finds the
# client certificate in its default directory under $HOME).
tls_under_load() {
    local img=$T/l.img src=$T/src.img out=$T/out.img uri
    pki
    mk_image "$img" 64M
    mk_image "$src" 64M 0:64M
    srv_start unix "$img" -t --tls-certificates "$PKI/server"
    uri="nbds+unix:///?socket=$SRV_SOCK&tls-certificates=$PKI/client"
    nbdcopy --connections=4 --requests=16 "$src" "$uri" || fail "nbdcopy in"
    nbdcopy --connections=4 --requests=16 "$uri" "$out" || fail "nbdcopy out"
    same_content "$src" "$img" "image after 4-connection nbdcopy over TLS"
    same_content "$src" "$out" "4-connection nbdcopy out over TLS"
    if command -v fio >/dev/null; then
        mkdir -p "$T/home/.pki"
        cp -r "$PKI/client" "$T/home/.pki/libnbd"
        HOME=$T/home fio_verify_uri "nbds+unix:///?socket=$SRV_SOCK"
    fi
    [ "$(grep -c 'TLS established' "$SRV_LOG")" -ge 12 ] ||
        fail "fewer TLS sessions than connections: $(cat "$SRV_LOG")"
    srv_stop
}

# --print-uri names nbds when the export it names needs TLS: the default
# export tls-only under --tls=on.  nbdinfo takes the printed URI as it is,
# adding only its credentials, over the unix socket and over TCP.
uri_of_tls_only_default() {
    local img=$T/u.img
    pki
    mk_image "$img" 1M
    srv_spawn -k "$T/u.sock" -t --tls=on --tls-certificates "$PKI/server" \
        --export "disk=$img,tls-only" || fail "rawnbd did not start"
    [ "$SRV_URI" = "nbds+unix:///disk?socket=$T/u.sock" ] ||
        fail "--print-uri printed $SRV_URI"
    [ "$(nbdinfo --size "$SRV_URI&tls-certificates=$PKI/client")" = 1048576 ] ||
        fail "nbdinfo with the printed URI $SRV_URI"
    srv_stop
    srv_start tcp "$img" -t --tls=on --tls-certificates "$PKI/server" \
        -x disk --export "other=$img,tls-only"
    [ "$SRV_URI" = "nbd://127.0.0.1:$SRV_PORT/disk" ] ||
        fail "--print-uri printed $SRV_URI for a plaintext default export"
    srv_stop
    srv_spawn -b 127.0.0.1 -p "$(free_port)" -t --tls=on \
        --tls-certificates "$PKI/server" --export "disk=$img,tls-only" ||
        fail "rawnbd did not start on TCP"
    [[ $SRV_URI == nbds://127.0.0.1:*/disk ]] || fail "--print-uri printed $SRV_URI"
    [ "$(nbdinfo --size "$SRV_URI?tls-certificates=$PKI/client")" = 1048576 ] ||
        fail "nbdinfo with the printed URI $SRV_URI"
    srv_stop
}

tap_case "TLS start-up errors" startup_errors
tap_case "qemu-img over X.509 (unix, TCP)" qemu_x509
tap_case "qemu-img over PSK" qemu_psk
tap_case "nbdcopy both ways over X.509 and PSK" nbdcopy_both_ways
tap_case "several TLS connections: nbdcopy, fio" tls_under_load
tap_case "--print-uri: nbds for a tls-only default export" uri_of_tls_only_default
tap_done
