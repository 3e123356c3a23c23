#!/bin/sh
# Shell completions (bash, zsh, fish) and man pages for swarmd and swarmctl,
# generated from their argument parser: the completions by the binaries
# themselves (--generate-completion-script), the man pages by
# swift-argument-parser's generate-manual tool (the tool behind its
# GenerateManual plugin), built from the package checkout SwiftPM already
# fetched, offline, in its own scratch folder (so it never waits on a
# running `swift build` or `swift test`).
#
# Usage: scripts/gen-docs.sh OUTDIR
#   writes OUTDIR/completions/{swarmctl,swarmd}.bash, _swarmctl, _swarmd,
#          swarmctl.fish, swarmd.fish and OUTDIR/man/swarmctl.1, swarmd.1
#
# Environment:
#   BUILD_DIR        where swarmd and swarmctl were built (default .build/release,
#                    else .build/debug when only that exists)
#   GENERATE_MANUAL  a generate-manual binary to use instead of building one
set -eu
# The build below runs the tools it compiles: under a strict umask (0177, as a
# unit or a test may set) they would be written without execute permission.
umask 022

[ $# -eq 1 ] || { echo "usage: scripts/gen-docs.sh OUTDIR" >&2; exit 64; }
out=$1
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")/.."
if [ -z "${BUILD_DIR:-}" ]; then
    BUILD_DIR=.build/release
    [ -x "$BUILD_DIR/swarmctl" ] || BUILD_DIR=.build/debug
fi
for b in swarmd swarmctl; do
    [ -x "$BUILD_DIR/$b" ] || { echo "gen-docs.sh: $BUILD_DIR/$b not found (build with: swift build -c release)" >&2; exit 1; }
done

mkdir -p "$out/completions" "$out/man"
for b in swarmd swarmctl; do
    "$BUILD_DIR/$b" --generate-completion-script bash > "$out/completions/$b.bash"
    "$BUILD_DIR/$b" --generate-completion-script zsh > "$out/completions/_$b"
    "$BUILD_DIR/$b" --generate-completion-script fish > "$out/completions/$b.fish"
done

tool=${GENERATE_MANUAL:-}
if [ -z "$tool" ]; then
    parser=.build/checkouts/swift-argument-parser
    [ -f "$parser/Package.swift" ] || { echo "gen-docs.sh: $parser is missing (swift build fetches it)" >&2; exit 1; }
    tool=.build/generate-manual/debug/generate-manual
    if [ ! -x "$tool" ]; then
        echo "gen-docs.sh: building swift-argument-parser's generate-manual (once)" >&2
        swift build --package-path "$parser" --scratch-path .build/generate-manual --product generate-manual >&2
    fi
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for b in swarmd swarmctl; do
    "$tool" "$BUILD_DIR/$b" --output-directory "$tmp" --section 1
    # mdoc wants .Pp, not an empty line, between paragraphs (groff -ww warns otherwise).
    sed 's/^[[:space:]]*$/.Pp/' "$tmp/$b.1" > "$out/man/$b.1"
done
echo "gen-docs.sh: completions and man pages in $out"
