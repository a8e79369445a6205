#!/bin/sh
# build.sh: install what is missing, build, and serve or test.
#
#   ./build.sh serve    build, then serve a demo image (Ctrl-C stops it)
#   ./build.sh check    build, then run every test (also under ASan+UBSan)
#   ./build.sh build    just build (into ./build)
#   ./build.sh bench    the side-by-side benchmark against qemu-nbd, nbdkit...
#   ./build.sh fuzz [SECONDS]   run each fuzz target (tests/fuzz) with clang
#   ./build.sh deps [serve|check|bench]   just install the packages
#
# Needs Debian 12 (bookworm) or similar; installs packages with apt-get
# (as root, or through sudo) only when they are missing.
set -eu

cd "$(dirname "$0")"
top=$(pwd)

BUILD_PKGS="gcc make meson ninja-build pkg-config libglib2.0-dev libaio-dev
libgnutls28-dev"
TEST_PKGS="libnbd-dev libnbd-bin python3-libnbd qemu-utils fio gnutls-bin
mandoc valgrind clang libclang-rt-14-dev systemd nbdkit nbd-client
qemu-system-x86 busybox-static e2fsprogs xz-utils dpkg-dev libpixman-1-dev
libfdt-dev zlib1g-dev curl strace"
BENCH_PKGS="libnbd-bin qemu-utils nbdkit nbd-server fio util-linux"

say() { printf '%s\n' "build.sh: $*" >&2; }

install_missing() {
    missing=""
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
                grep -q "install ok installed"; then
            missing="$missing $p"
        fi
    done
    [ -z "$missing" ] && return 0
    say "installing:$missing"
    if [ "$(id -u)" -eq 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null; then
        sudo="sudo"
    else
        say "need root (or sudo) to install:$missing"
        exit 1
    fi
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends $missing >/dev/null
}

# meson_build DIR [meson options...]
meson_build() {
    dir=$1
    shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" "$@" >/dev/null
    elif [ $# -gt 0 ]; then
        # An earlier command may have set it up otherwise (build: no tests).
        meson configure "$dir" "$@" >/dev/null
    fi
    ninja -C "$dir" >/dev/null
}

cmd=${1:-build}
case "$cmd" in
deps)
    case "${2:-check}" in
    serve) install_missing $BUILD_PKGS ;;
    bench) install_missing $BUILD_PKGS $TEST_PKGS $BENCH_PKGS ;;
    *) install_missing $BUILD_PKGS $TEST_PKGS ;;
    esac
    ;;
build)
    install_missing $BUILD_PKGS
    meson_build build -Dtests=false
    say "built build/server/rawnbd"
    ;;
serve)
    install_missing $BUILD_PKGS
    meson_build build -Dtests=false
    img=$top/demo.img
    if [ ! -f "$img" ]; then
        # 1 GiB, sparse, with some data at the start and in the middle.
        truncate -s 1G "$img"
        printf 'rawnbd demo image\n' | dd of="$img" conv=notrunc 2>/dev/null
        dd if=/dev/urandom of="$img" bs=1M count=4 seek=512 conv=notrunc \
            2>/dev/null
    fi
    sock=${RAWNBD_DEMO_SOCKET:-/tmp/rawnbd-demo.sock}
    say "serving $img on TCP port 10809 and $sock; try:"
    say "  nbdinfo nbd://localhost    qemu-img info nbd+unix:///?socket=$sock"
    exec build/server/rawnbd --persistent -k "$sock" -p 10809 "$img"
    ;;
check)
    install_missing $BUILD_PKGS $TEST_PKGS
    meson_build build -Dtests=true
    meson test -C build --print-errorlogs --num-processes 2
    if [ "${RAWNBD_SKIP_SANITIZERS:-0}" != 1 ]; then
        # The VM, the other projects' suites and lint ran above; here the
        # unit, fuzz-replay and interop tests run again under sanitizers.
        meson_build build-asan -Db_sanitize=address,undefined \
            -Db_lundef=false -Dfault_injection=true
        ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 \
            meson test -C build-asan --print-errorlogs --num-processes 2 \
            --no-suite vm --no-suite external --no-suite slow --no-suite lint
        meson_build build-tsan -Db_sanitize=thread -Db_lundef=false
        TSAN_OPTIONS=halt_on_error=1 \
            meson test -C build-tsan --print-errorlogs --num-processes 2 \
            --suite coro
        # The portable coroutine backend, built as distributions build
        # (with _FORTIFY_SOURCE, which checks every longjmp).
        CFLAGS="${CFLAGS:-} -D_FORTIFY_SOURCE=2" meson_build build-ucontext \
            -Dcoroutine_backend=ucontext
        meson test -C build-ucontext --print-errorlogs --num-processes 2 \
            --suite coro
    fi
    say "all tests passed"
    ;;
bench)
    install_missing $BUILD_PKGS $TEST_PKGS $BENCH_PKGS
    meson_build build -Dtests=true
    shift
    exec tests/bench/nbd-bench --rawnbd build/server/rawnbd "$@"
    ;;
fuzz)
    install_missing $BUILD_PKGS $TEST_PKGS
    shift
    exec tests/fuzz/run-fuzzers.sh "$@"
    ;;
*)
    say "unknown command '$cmd': use serve, check, build, bench, fuzz or deps"
    exit 2
    ;;
esac
