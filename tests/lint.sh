#!/bin/sh
# lint.sh SOURCE_DIR: cppcheck and clang-tidy over coro/, proto/, server/.
# Any finding fails.  Skips (77) if a tool is missing.  Accepted findings
# are suppressed where they occur, with the reason next to them, and the
# left-out clang-tidy checks are explained in .clang-tidy.
set -eu
src=$(cd "${1:-$(dirname "$0")/..}" && pwd)
cd "$src"
for tool in cppcheck clang-tidy clang meson ninja; do
    if ! command -v $tool >/dev/null; then
        echo "lint: $tool is missing: skipped"
        exit 77
    fi
done
status=0
files=$(ls coro/*.c proto/*.c server/*.c)

echo "lint: layering"
# coro/ and proto/ never include server/; proto/ includes nothing of coro/
# and does no I/O (no socket, file or thread calls).
out=$( (grep -nE '#include "(\.\./)?server/|#include "(server|conn)\.h"' \
            coro/*.[ch] proto/*.[ch];
        grep -nE '#include "(\.\./)?coro/|#include "(aio|coroutine)\.h"' \
            proto/*.[ch];
        grep -nE '\<(read|write|recv|send|sendmsg|socket|open|pthread_create)\(' \
            proto/*.c ) || true)
if [ -n "$out" ]; then
    printf 'layering broken:\n%s\n' "$out"
    status=1
fi

echo "lint: cppcheck"
out=$(cppcheck --enable=warning,style,performance,portability --std=c11 \
        --inline-suppr -q --error-exitcode=0 -D__x86_64__ -D_GNU_SOURCE \
        -DCONFIG_COROUTINE_ASM=1 -DCONFIG_COROUTINE_UCONTEXT=0 \
        --suppress=missingIncludeSystem --suppress=unusedStructMember \
        -I . -I coro -I proto -I server $files 2>&1) || true
if [ -n "$out" ]; then
    printf '%s\n' "$out"
    status=1
fi

# clang-tidy wants a compilation database made for clang.
db=${LINT_BUILD:-$src/build-lint}
if [ ! -f "$db/compile_commands.json" ]; then
    CC=clang meson setup "$db" -Dtests=false >/dev/null
fi
ninja -C "$db" >/dev/null
echo "lint: clang-tidy"
out=$(clang-tidy -p "$db" --quiet $files 2>/dev/null |
      grep -E 'warning:|error:' || true)
if [ -n "$out" ]; then
    printf '%s\n' "$out"
    status=1
fi
[ $status = 0 ] && echo "lint: no findings"
exit $status
