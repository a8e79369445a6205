#!/bin/bash
# run-in-vm.sh - run one shell command inside a throwaway Linux VM.
#
# The VM boots a stock Debian kernel (linux-image-amd64, fetched once into a
# cache directory, never installed on the host) under qemu-system-x86_64.
# Its root filesystem is the host's own root, shared read-only over 9p with a
# tmpfs overlay on top, so every host binary (including freshly built ones)
# runs inside unchanged and every write stays in guest RAM.  An optional
# scratch directory is shared read-write at the same path as on the host.
# The guest has no network device.
#
# usage: run-in-vm.sh [options] 'shell command'
#   -s DIR     share DIR read-write at the same path in the guest (scratch)
#   -m SIZE    guest memory (default $VM_MEM or 2G)
#   -c N       virtual CPUs (default $VM_SMP or 2)
#   -t SEC     kill the VM after SEC seconds (default $VM_TIMEOUT or 600)
#   -e N=V     set environment variable N to V for the command (repeatable)
#   -E NAME    pass the host's variable NAME through, if set (repeatable)
#   -p PKG     make sure the Debian package PKG is installed on the host
#              (the guest runs the host's binaries); repeatable
#   -k         keep the per-run control directory (console log) and say where
#   -v         also stream the guest kernel console to stderr
#   --prepare  only fetch and cache the kernel and initramfs, then exit
#
# The command runs with bash, cwd = the host's $PWD, stdin = /dev/null.  Its
# stdout and stderr are streamed live.  Exit status: the command's own, 124 if
# the VM timed out, 125 if the VM died without reporting a status, 77 if no
# VM can run here (kernel cannot be fetched, qemu cannot be installed), 2 for
# a usage error.
#
# Environment: VM_CACHE (default: tests/vm/cache next to this script),
# VM_ACCEL (tcg; kvm only on hosts with real VT-x/AMD-V), VM_MEM, VM_SMP,
# VM_TIMEOUT, VM_BOOT=bzimage (skip the decompressed PVH vmlinux).

set -euo pipefail

SELF=$(readlink -f -- "${BASH_SOURCE[0]}")
HERE=$(dirname -- "$SELF")
VM_CACHE=${VM_CACHE:-$HERE/cache}
VM_ACCEL=${VM_ACCEL:-tcg}
mem=${VM_MEM:-2G}
smp=${VM_SMP:-2}
tmo=${VM_TIMEOUT:-600}
scratch=
keep=0
verbose=0
prepare_only=0
envlines=()
packages=()

say() { printf 'run-in-vm: %s\n' "$*" >&2; }
die() { say "error: $*"; exit "${2:-1}"; }

# Print a message nobody can miss and exit 77 (the "skipped" code of meson,
# automake and friends).
skip() {
    {
        echo '#####################################################################'
        echo "# run-in-vm: SKIP: $*"
        echo '# The kernel-client VM tests cannot run on this machine.'
        echo '#####################################################################'
    } >&2
    exit 77
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$SELF" >&2
    exit 2
}

shell_quote() { printf '%q' "$1"; }

while [ $# -gt 0 ]; do
    case $1 in
    -s) [ $# -ge 2 ] || usage; scratch=$2; shift 2 ;;
    -m) [ $# -ge 2 ] || usage; mem=$2; shift 2 ;;
    -c) [ $# -ge 2 ] || usage; smp=$2; shift 2 ;;
    -t) [ $# -ge 2 ] || usage; tmo=$2; shift 2 ;;
    -e)
        [ $# -ge 2 ] || usage
        case $2 in [A-Za-z_]*=*) ;; *) die "-e wants NAME=VALUE, got '$2'" 2 ;; esac
        envlines+=("export ${2%%=*}=$(shell_quote "${2#*=}")")
        shift 2 ;;
    -E)
        [ $# -ge 2 ] || usage
        if [ -n "${!2+set}" ]; then
            envlines+=("export $2=$(shell_quote "${!2}")")
        fi
        shift 2 ;;
    -p) [ $# -ge 2 ] || usage; packages+=("$2"); shift 2 ;;
    -k) keep=1; shift ;;
    -v) verbose=1; shift ;;
    --prepare) prepare_only=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (try -h)" 2 ;;
    *) break ;;
    esac
done
if [ "$prepare_only" = 0 ]; then
    [ $# -eq 1 ] || usage
    command=$1
fi
if [ -n "$scratch" ]; then
    [ -d "$scratch" ] || die "scratch directory '$scratch' does not exist" 2
    scratch=$(readlink -f -- "$scratch")
fi

# ---------------------------------------------------------------------------
# Host packages

# Install whatever Debian packages are missing.  apt-get update runs only when
# something has to be installed.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        skip "missing packages: ${missing[*]} (not root, cannot apt-get install them)"
    fi
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq >&2 || say "warning: apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2 || skip "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------
# Kernel, modules, vmlinux and initramfs, cached in $VM_CACHE

KDIR=$VM_CACHE/kernel

# The versioned package that linux-image-amd64 currently depends on.
kernel_package_name() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# Modules the guest may want, as directories under lib/modules/V/kernel.  The
# rest of the tree (GPUs, wireless, sound, media, ...) is deleted after the
# download: it is about 90% of the package.
KEEP_MODULE_DIRS='fs net lib crypto arch block mm drivers/block drivers/virtio
drivers/char drivers/md drivers/nvdimm drivers/dax drivers/scsi'

fetch_kernel() {
    local pkg dl deb v
    pkg=$(kernel_package_name)
    if [ -z "$pkg" ]; then
        say "apt-cache does not know linux-image-amd64 yet; running apt-get update"
        apt-get update -qq >&2 || true
        pkg=$(kernel_package_name)
    fi
    [ -n "$pkg" ] || skip "cannot resolve linux-image-amd64 to a kernel package (no apt lists or mirror?)"
    say "fetching $pkg into $VM_CACHE (first use only)"
    dl=$VM_CACHE/download
    rm -rf "$dl" "$KDIR.new"
    mkdir -p "$dl"
    if ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
        # Stale package lists name a file the mirror no longer has.
        say "download failed; retrying after apt-get update"
        apt-get update -qq >&2 || true
        pkg=$(kernel_package_name)
        if [ -z "$pkg" ] || ! (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
            rm -rf "$dl"
            skip "apt-get download ${pkg:-linux-image-amd64} failed (no network or no mirror?)"
        fi
    fi
    deb=$(ls "$dl"/*.deb)
    dpkg-deb -x "$deb" "$KDIR.new"
    rm -rf "$dl"
    v=$(ls "$KDIR.new/lib/modules")
    [ -n "$v" ] && [ -f "$KDIR.new/boot/vmlinuz-$v" ] || die "unexpected layout in $deb"
    (
        cd "$KDIR.new/lib/modules/$v/kernel"
        local d keep
        for d in $(find . -mindepth 1 -maxdepth 2 -type d | sed 's|^\./||'); do
            keep=0
            for k in $KEEP_MODULE_DIRS; do
                case $k/ in "$d"/*) keep=1 ;; esac # a parent of a kept dir
                case $d/ in "$k"/*) keep=1 ;; esac # a kept dir or below it
            done
            [ $keep = 1 ] || rm -rf "$d"
        done
    )
    rm -rf "$KDIR.new/usr" "$KDIR.new/etc"
    busybox depmod -b "$KDIR.new" "$v" || die "depmod failed"
    echo "$v" >"$KDIR.new/VERSION"
    rm -rf "$KDIR"
    mv "$KDIR.new" "$KDIR"
}

# Decompress the bzImage into an ELF vmlinux that QEMU can boot through the
# PVH entry point: that saves the in-guest decompression, which takes seconds
# under TCG.
make_vmlinux() {
    local bz=$1 out=$2 off magic
    for magic in '\xfd7zXZ\x00' '\x28\xb5\x2f\xfd' '\x1f\x8b\x08\x00'; do
        off=$(LC_ALL=C grep -obUaP -m1 "$magic" "$bz" | head -n1 | cut -d: -f1) || true
        [ -n "$off" ] && break
    done
    [ -n "$off" ] || return 1
    tail -c +$((off + 1)) "$bz" >"$out.z"
    case $magic in
    '\xfd7zXZ\x00') xz -dc --single-stream "$out.z" >"$out.tmp" ;;
    '\x28\xb5\x2f\xfd') zstd -dcq "$out.z" >"$out.tmp" ;;
    *) gzip -dc "$out.z" >"$out.tmp" 2>/dev/null || [ -s "$out.tmp" ] ;;
    esac || { rm -f "$out.z" "$out.tmp"; return 1; }
    rm -f "$out.z"
    if [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" != 7f454c46 ]; then
        rm -f "$out.tmp"
        return 1
    fi
    mv "$out.tmp" "$out"
}

# Module file names (relative to the module dir) in load order, for the
# modules named as arguments, dependencies first.  Built-in modules are
# skipped.
module_load_order() {
    local moddir=$1 name line path deps i
    shift
    for name in "$@"; do
        line=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep") || {
            grep -qE "/${name}\.ko$" "$moddir/modules.builtin" && continue
            die "kernel module $name not found"
        }
        path=${line%%:*}
        read -r -a deps <<<"${line#*:}"
        for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
            echo "${deps[i]}"
        done
        echo "$path"
    done | awk '!seen[$0]++'
}

# PID 1 of the guest.  It stays in the initramfs, so the kernel's own module
# requests (ext4 asks for crc32c, for example) run the busybox modprobe here.
write_init() {
    cat <<'EOF'
#!/bin/busybox sh
# PID 1 of the run-in-vm.sh guest.
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

halt_vm() {
    sync
    poweroff -f
    reboot -f
}
fail() {
    echo "vm-init: $*" >/dev/console
    [ -w /vmctl ] && echo "vm-init: $*" >>/vmctl/stderr
    halt_vm
}

while read -r m; do
    insmod "/modules/$m" || fail "insmod $m failed"
done </modules.list

o9p=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /vmctl /lower /upper /newroot
mount -t 9p -o $o9p,cache=none vmctl /vmctl || fail "cannot mount the vmctl share"
. /vmctl/vm.conf
mount -t 9p -o $o9p,ro,cache=loose hostroot /lower || fail "cannot mount the host root"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work \
    overlay /newroot || fail "cannot mount the overlay root"

R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t devtmpfs devtmpfs $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=0755 run $R/run
# /tmp stays the overlay: the host's files there (build trees, binaries) must
# stay visible, and writes land in guest RAM anyway.

# The full module tree, for busybox modprobe both here (kernel requests) and
# in the new root (the command's own modprobe calls).
mkdir -p /lib/modules/$VM_KVER $R/lib/modules/$VM_KVER
mount -o bind "/lower$VM_MODDIR" /lib/modules/$VM_KVER
mount -o bind "/lower$VM_MODDIR" $R/lib/modules/$VM_KVER

mkdir -p $R/run/vm/ctl $R/run/vm/bin
mount -o bind /vmctl $R/run/vm/ctl
cp /bin/busybox $R/run/vm/bin/busybox
for a in modprobe insmod rmmod lsmod modinfo depmod; do
    ln -s busybox $R/run/vm/bin/$a
done

if [ -n "$VM_SCRATCH" ]; then
    mkdir -p "$R$VM_SCRATCH"
    mount -t 9p -o $o9p,cache=none scratch "$R$VM_SCRATCH" ||
        fail "cannot mount the scratch share"
fi

hostname vm
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up

chroot $R /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/vm/bin \
    HOME=/root TERM=dumb LANG=C.UTF-8 VM_GUEST=1 \
    /bin/bash /run/vm/ctl/cmd.sh </dev/null >>/vmctl/stdout 2>>/vmctl/stderr
echo $? >/vmctl/status.tmp
mv /vmctl/status.tmp /vmctl/status
kill -9 -1
halt_vm
EOF
}

build_initramfs() {
    local v=$1 out=$2 moddir=$KDIR/lib/modules/$1 root m bb
    root=$(mktemp -d "$VM_CACHE/initramfs.XXXXXX")
    mkdir -p "$root/bin" "$root/modules"
    bb=$(command -v busybox)
    [ -n "$bb" ] || die "no busybox"
    cp "$bb" "$root/bin/busybox"
    write_init >"$root/init"
    chmod 755 "$root/init"
    module_load_order "$moddir" virtio_pci 9pnet_virtio 9p overlay >"$root/modules.list"
    while read -r m; do
        mkdir -p "$root/modules/$(dirname "$m")"
        cp "$moddir/$m" "$root/modules/$m"
    done <"$root/modules.list"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out.tmp"
    rm -rf "$root"
    mv "$out.tmp" "$out"
}

prepare() {
    ensure_packages qemu-system-x86 busybox-static cpio xz-utils ${packages[@]+"${packages[@]}"}
    mkdir -p "$VM_CACHE"
    exec 9>"$VM_CACHE/.lock"
    flock 9
    [ -f "$KDIR/VERSION" ] || fetch_kernel
    KVER=$(cat "$KDIR/VERSION")
    MODDIR=$KDIR/lib/modules/$KVER
    BZIMAGE=$KDIR/boot/vmlinuz-$KVER
    VMLINUX=$VM_CACHE/vmlinux-$KVER
    if [ ! -f "$VMLINUX" ] && [ ! -f "$VMLINUX.none" ]; then
        make_vmlinux "$BZIMAGE" "$VMLINUX" || {
            say "warning: cannot decompress $BZIMAGE; booting the bzImage (slower)"
            : >"$VMLINUX.none"
        }
    fi
    KIMAGE=$VMLINUX
    if [ ! -f "$VMLINUX" ] || [ "${VM_BOOT:-}" = bzimage ]; then
        KIMAGE=$BZIMAGE
    fi
    # The initramfs depends on this script (its /init) and the kernel.
    local sum
    sum=$( (cat "$SELF"; echo "$KVER") | md5sum | cut -c1-12)
    INITRD=$VM_CACHE/initramfs-$KVER-$sum.cpio
    if [ ! -f "$INITRD" ]; then
        rm -f "$VM_CACHE"/initramfs-*.cpio
        build_initramfs "$KVER" "$INITRD"
    fi
    exec 9>&-
}

prepare
[ "$prepare_only" = 1 ] && exit 0

# ---------------------------------------------------------------------------
# Boot

ctl=$(mktemp -d "${TMPDIR:-/tmp}/run-in-vm.XXXXXX")
qpid=
tails=()
cleanup() {
    local rc=$?
    if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
        kill "$qpid" 2>/dev/null || true
        wait "$qpid" 2>/dev/null || true
    fi
    for p in "${tails[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    if [ "$keep" = 1 ]; then
        say "control directory kept: $ctl"
    else
        rm -rf "$ctl"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

{
    printf 'VM_KVER=%s\n' "$(shell_quote "$KVER")"
    printf 'VM_MODDIR=%s\n' "$(shell_quote "$(readlink -f -- "$MODDIR")")"
    printf 'VM_SCRATCH=%s\n' "$(shell_quote "$scratch")"
} >"$ctl/vm.conf"
{
    echo '# written by run-in-vm.sh'
    for l in "${envlines[@]}"; do echo "$l"; done
    echo "cd $(shell_quote "$PWD") 2>/dev/null || { echo \"run-in-vm: no $(shell_quote "$PWD") in the guest; running in /\" >&2; cd /; }"
    printf '%s\n' "$command"
} >"$ctl/cmd.sh"
: >"$ctl/stdout"
: >"$ctl/stderr"
: >"$ctl/console.log"

qopt() { printf '%s' "${1//,/,,}"; } # QEMU escapes commas by doubling them

# shellcheck disable=SC2054 # the commas are QEMU option syntax
qemu_args=(
    -accel "$VM_ACCEL$([ "$VM_ACCEL" = tcg ] && echo ,thread=multi,tb-size=256)"
    -cpu "$([ "$VM_ACCEL" = tcg ] && echo max,la57=off || echo host)"
    -M pc -smp "$smp" -m "$mem"
    -nodefaults -no-user-config -display none -monitor none -no-reboot -nic none
    -kernel "$KIMAGE" -initrd "$INITRD"
    -append "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic mitigations=off tsc=unstable 8250.nr_uarts=1 i8042.noaux i8042.nokbd i8042.nopnp"
    -serial "file:$ctl/console.log"
    -fsdev "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap"
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
    -fsdev "local,id=vmctl,path=$(qopt "$ctl"),security_model=none"
    -device virtio-9p-pci,fsdev=vmctl,mount_tag=vmctl
)
if [ -n "$scratch" ]; then
    # shellcheck disable=SC2054
    qemu_args+=(
        -fsdev "local,id=scratch,path=$(qopt "$scratch"),security_model=none,multidevs=remap"
        -device virtio-9p-pci,fsdev=scratch,mount_tag=scratch
    )
fi

timeout -k 5 "$tmo" qemu-system-x86_64 "${qemu_args[@]}" </dev/null >"$ctl/qemu.log" 2>&1 &
qpid=$!
tail -s 0.2 -n +1 -f --pid="$qpid" "$ctl/stdout" &
tails+=($!)
tail -s 0.2 -n +1 -f --pid="$qpid" "$ctl/stderr" >&2 &
tails+=($!)
if [ "$verbose" = 1 ]; then
    tail -s 0.2 -n +1 -f --pid="$qpid" "$ctl/console.log" >&2 &
    tails+=($!)
fi
qrc=0
wait "$qpid" || qrc=$?
qpid=
for p in "${tails[@]}"; do
    wait "$p" 2>/dev/null || true
done
tails=()

if [ -f "$ctl/status" ]; then
    rc=$(cat "$ctl/status")
    [[ $rc =~ ^[0-9]+$ ]] || rc=125
    exit "$rc"
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    say "timeout: the VM ran for more than ${tmo}s and was killed"
    echo '--- guest console (last 40 lines) ---' >&2
    tail -n 40 "$ctl/console.log" >&2
    exit 124
fi
say "the VM died without reporting a status (qemu exit $qrc)"
echo '--- qemu ---' >&2
tail -n 20 "$ctl/qemu.log" >&2
echo '--- guest console (last 40 lines) ---' >&2
tail -n 40 "$ctl/console.log" >&2
exit 125
