# lib.sh - helpers shared by the external test suites (sourced, not run).
#
# Sets: EXT_DIR (this directory), EXT_REPO, EXT_CACHE, RAWNBD.
# Provides: ext_say, ext_skip, ext_fail_setup, ext_need_pkgs, ext_apt_source,
#           ext_now, ext_elapsed.
#
# Environment:
#   RAWNBD                    the server binary (default build/server/rawnbd)
#   RAWNBD_EXTERNAL_CACHE     where sources and builds are kept
#                             (default tests/external/cache)
#   RAWNBD_REQUIRE_EXTERNAL=1 a suite that cannot get what it needs fails
#                             (exit 1) instead of being skipped (exit 77)

EXT_DIR=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")
EXT_REPO=$(cd "$EXT_DIR/../.." && pwd)
EXT_CACHE=${RAWNBD_EXTERNAL_CACHE:-$EXT_DIR/cache}
EXT_NAME=${EXT_NAME:-external}
mkdir -p "$EXT_CACHE"
EXT_CACHE=$(cd "$EXT_CACHE" && pwd)

RAWNBD=${RAWNBD:-$EXT_REPO/build/server/rawnbd}
case $RAWNBD in /*) ;; *) RAWNBD=$EXT_REPO/$RAWNBD ;; esac

ext_say() { printf '%s: %s\n' "$EXT_NAME" "$*" >&2; }

# Something the suite needs cannot be had on this machine: skip (77), or
# fail when RAWNBD_REQUIRE_EXTERNAL=1.
ext_skip() {
    local banner="**********************************************************"
    printf '%s\n%s: SKIPPED: %s\n%s\n' "$banner" "$EXT_NAME" "$*" "$banner" >&2
    if [ "${RAWNBD_REQUIRE_EXTERNAL:-0}" = 1 ]; then
        ext_say "RAWNBD_REQUIRE_EXTERNAL=1: failing instead of skipping"
        echo "0 passed, 1 failed"
        exit 1
    fi
    exit 77
}

# A broken set-up (not a missing resource): always a failure.
ext_fail_setup() {
    ext_say "SETUP FAILED: $*"
    echo "0 passed, 1 failed"
    exit 1
}

ext_now() { date +%s.%N; }
ext_elapsed() { awk -v a="$1" -v b="$(ext_now)" 'BEGIN { printf "%.1f", b - a }'; }

[ -x "$RAWNBD" ] || ext_fail_setup "rawnbd binary not found at $RAWNBD (build it with 'ninja -C build', or set RAWNBD=PATH)"

# ext_need_pkgs PKG...: install the Debian packages that are missing.
ext_need_pkgs() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
            grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        ext_skip "packages missing and not root to install them: ${missing[*]}"
    fi
    ext_say "installing ${missing[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        ext_skip "cannot install packages: ${missing[*]}"
}

# --- Debian source packages --------------------------------------------------
#
# apt-get runs on a private configuration under $EXT_CACHE/apt: its sources
# are the host's enabled apt sources turned into deb-src entries, and it keeps
# its own package lists and archive cache, so nothing of the host's apt set-up
# is changed.

EXT_APT=$EXT_CACHE/apt

# Write the deb-src entries derived from /etc/apt/sources.list{,.d/*}.
ext_apt_write_sources() {
    local f out=$EXT_APT/etc
    rm -rf "$out"
    mkdir -p "$out/sources.list.d" "$EXT_APT/lists/partial" \
        "$EXT_APT/cache/archives/partial"
    : >"$out/sources.list"
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # one-line format: "deb [opts] URI SUITE COMP..." -> "deb-src ..."
        sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >>"$out/sources.list"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: stanzas whose Types has "deb" get Types: deb-src; others
        # (deb-src only already, or disabled) are dropped.
        awk '
            function flush() {
                if (st != "" && keep && !off) printf "%s\n", st
                st = ""; keep = 0; off = 0
            }
            /^[[:space:]]*$/ { flush(); next }
            /^#/ { next }
            /^Types:/ {
                keep = ($0 ~ /[[:space:]]deb([[:space:]]|$)/)
                st = st "Types: deb-src\n"; next
            }
            /^Enabled:[[:space:]]*no/ { off = 1 }
            { st = st $0 "\n" }
            END { flush() }
        ' "$f" >"$out/sources.list.d/$(basename "$f")"
    done
}

# ext_first_file GLOB-EXPANSION...: print the first argument that is a file.
ext_first_file() {
    local f
    for f in "$@"; do
        [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
    done
    return 0
}

ext_apt() {
    apt-get -q \
        -o Dir::Etc::sourcelist="$EXT_APT/etc/sources.list" \
        -o Dir::Etc::sourceparts="$EXT_APT/etc/sources.list.d" \
        -o Dir::State::Lists="$EXT_APT/lists" \
        -o Dir::Cache="$EXT_APT/cache" \
        -o APT::Sandbox::User=root \
        "$@"
}

# ext_apt_source SRCPKG VERSION DEST: unpack Debian's source package SRCPKG
# (Debian patches applied) into DEST, once per VERSION; VERSION (may be
# empty) is tried first, then whatever version the sources offer.  Sets
# EXT_SRC_VERSION to the version unpacked.  Call it directly, not in $(...):
# it may exit.
ext_apt_source() {
    local pkg=$1 ver=$2 dest=$3 dsc
    local dl=$EXT_CACHE/downloads/$pkg/${ver:-any}
    dl=${dl//:/_}
    if [ -f "$dest/.rawnbd-unpacked" ] &&
        [ "$(cat "$dest/.rawnbd-requested" 2>/dev/null)" = "$ver" ]; then
        EXT_SRC_VERSION=$(cat "$dest/.rawnbd-unpacked")
        return 0
    fi
    command -v dpkg-source >/dev/null || ext_need_pkgs dpkg-dev
    mkdir -p "$dl"
    dsc=$(ext_first_file "$dl/${pkg}"_*.dsc)
    if [ -z "$dsc" ]; then
        ext_apt_write_sources
        ext_say "fetching the Debian source package '$pkg' ${ver:+($ver)}"
        # A source without deb-src indexes makes update complain; what
        # matters is whether apt-get source finds the package afterwards.
        ext_apt update >"$EXT_APT/update.log" 2>&1 || true
        (
            cd "$dl" &&
                { { [ -n "$ver" ] && ext_apt source --download-only "$pkg=$ver"; } ||
                    ext_apt source --download-only "$pkg"; }
        ) >"$dl/fetch.log" 2>&1 || {
            sed 's/^/    /' "$EXT_APT/update.log" "$dl/fetch.log" >&2
            rm -f "$dl"/*.dsc
            ext_skip "cannot fetch Debian's source package '$pkg' from this machine's apt sources"
        }
        dsc=$(ext_first_file "$dl/${pkg}"_*.dsc)
        [ -n "$dsc" ] || ext_fail_setup "apt-get source left no .dsc in $dl"
    fi
    rm -rf "$dest" "$dest.tmp"
    mkdir -p "$(dirname "$dest")"
    dpkg-source --no-check --no-copy -x "$dsc" "$dest.tmp" >"$dl/unpack.log" 2>&1 || {
        sed 's/^/    /' "$dl/unpack.log" >&2
        rm -rf "$dest.tmp"
        ext_fail_setup "dpkg-source -x $dsc failed"
    }
    sed -n 's/^Version: //p' "$dsc" | head -n1 >"$dest.tmp/.rawnbd-unpacked"
    printf '%s\n' "$ver" >"$dest.tmp/.rawnbd-requested"
    mv "$dest.tmp" "$dest"
    EXT_SRC_VERSION=$(cat "$dest/.rawnbd-unpacked")
}
