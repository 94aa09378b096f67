#!/usr/bin/env bash
# The simulation's binary, its examples, freshen-bench and the workspace's
# tests build every crate they share with one feature set (sim/Cargo.toml
# says how). A feature that a
# dev-dependency turns on and the binary does not would make each later step
# rebuild most of the tree (it cost CI's quickstart step 141 s). Fails, naming
# the crates, when two of these builds would differ.
set -euo pipefail
export LC_ALL=C # sort and join must agree on one order
# One line per crate: its name and version, then every feature set it is
# built with (a crate built for build scripts as well may have two).
features() {
    # (--workspace prints a blank line between its members' trees.)
    cargo tree -q "$@" -f '{p}|{f}' --prefix none | sed 's/ (\*)$//; s/ (proc-macro)//; /^$/d' | sort -u \
        | awk -F'|' '{sets[$1] = seen[$1]++ ? sets[$1] ";" $2 : $2} END {for (c in sets) print c "|" sets[c]}' | sort
}
binary=$(features -p freshen-sim -e normal)
differ=0
for other in "-p freshen-sim -e normal,dev" "-p freshen-bench -e normal" "--workspace -e normal,dev"; do
    # shellcheck disable=SC2086
    changed=$(join -t'|' <(echo "$binary") <(features $other) | awk -F'|' '$2 != $3')
    if [ -n "$changed" ]; then
        echo "cargo tree $other turns on features the binary's build does not (crate|binary|that build):"
        echo "$changed"
        differ=1
    fi
done
[ "$differ" -eq 0 ] && echo "one feature set: the binary, the examples, freshen-bench and the tests share every crate they both build"
exit "$differ"
