#!/bin/sh
# check-man.sh PAGE RAWNBD
#
# Checks the man page PAGE against the binary RAWNBD:
#   (a) `mandoc -Tlint -Wwarning` has nothing to say about it;
#   (b) every option `RAWNBD --help` lists is an item of the page, written
#       as --help writes it ("-k, --socket=PATH"; the argument name is
#       compared without regard to case, since the page sets it in
#       lowercase), and every option item of the page's OPTIONS section is
#       one that --help lists.
# Exit status: 0 pass, 1 fail, 77 skip (mandoc is not installed).
set -u

if [ $# -ne 2 ]; then
    echo "usage: $0 PAGE RAWNBD" >&2
    exit 1
fi
page=$1
rawnbd=$2

if ! command -v mandoc >/dev/null 2>&1; then
    echo "SKIP: mandoc is not installed (apt-get install mandoc)"
    exit 77
fi

tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
status=0

# MANPATH points nowhere so that mandoc does not look each cross-reference
# up in the host's manual database: what it says about that database is
# about the host, not about the page.
MANPATH=/nonexistent
export MANPATH

# (a) lint: warnings and worse only; style notes are not counted.
mandoc -Tlint -Wwarning "$page" >"$tmp/lint" 2>&1
rc=$?
if [ $rc -ne 0 ] || [ -s "$tmp/lint" ]; then
    echo "FAIL: mandoc -Tlint -Wwarning $page (exit $rc):"
    cat "$tmp/lint"
    status=1
fi

# (b) options.  Item heads of --help: "  -k, --socket=PATH   Listen ...".
if ! LC_ALL=C "$rawnbd" --help >"$tmp/help" 2>&1; then
    echo "FAIL: $rawnbd --help failed:"
    cat "$tmp/help"
    exit 1
fi
sed -n 's/^  *\(\(-[[:alnum:]], \)\{0,1\}--[^ ]*\).*/\1/p' "$tmp/help" \
    >"$tmp/heads"
if [ "$(wc -l <"$tmp/heads")" -lt 10 ]; then
    echo "FAIL: found only $(wc -l <"$tmp/heads") options in $rawnbd --help:"
    cat "$tmp/help"
    exit 1
fi

# The page as a reader sees it, without the overstrike of bold and
# underlined text.
bs=$(printf '\b')
if ! mandoc -Tascii "$page" >"$tmp/page.raw" 2>"$tmp/render"; then
    echo "FAIL: mandoc -Tascii $page:"
    cat "$tmp/render"
    exit 1
fi
sed "s/.$bs//g" "$tmp/page.raw" >"$tmp/page"

awk -v heads="$tmp/heads" '
    function long_name(s) {
        if (match(s, /--[[:alnum:]-]+/)) {
            return substr(s, RSTART, RLENGTH)
        }
        return ""
    }
    BEGIN {
        while ((getline h < heads) > 0) {
            want[tolower(h)] = h
            known[long_name(h)] = 1
        }
        close(heads)
    }
    {
        line = $0
        sub(/^ +/, "", line)
        lc = tolower(line)
        for (h in want) {
            if (lc == h || index(lc, h " ") == 1) {
                found[h] = 1
            }
        }
        # Section headings start in column 1; OPTIONS items in column 6.
        if ($0 ~ /^[A-Z]/) {
            in_options = ($0 == "OPTIONS")
        } else if (in_options && $0 ~ /^     -/) {
            n = long_name($0)
            if (n == "" || !(n in known)) {
                printf("FAIL: the page documents %s, which --help does not list\n", line)
                bad = 1
            }
        }
    }
    END {
        for (h in want) {
            if (!(h in found)) {
                printf("FAIL: --help lists \"%s\", which is not an item of the page\n", want[h])
                bad = 1
            }
        }
        exit bad
    }
' "$tmp/page" || status=1

if [ $status -eq 0 ]; then
    echo "ok: $page is clean for mandoc and documents the $(wc -l <"$tmp/heads") options of --help"
fi
exit $status
