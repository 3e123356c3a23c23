#!/bin/sh
# Install swarm: binaries, systemd units and examples.
#
# Usage: scripts/install.sh        (from anywhere; paths are relative to the repo)
#
# Environment:
#   BUILD_DIR  where swarmd and swarmctl were built  (default .build/release)
#   PREFIX     installation prefix                   (default /usr/local)
#   UNITDIR    systemd system unit folder            (default /etc/systemd/system)
#   DESTDIR    staging root prepended to every path  (default empty)
#
# Installs:
#   $PREFIX/bin/swarmd, $PREFIX/bin/swarmctl
#   $UNITDIR/swarmd.service (ExecStart= pointing at $PREFIX/bin/swarmd), swarmd.socket
#   /etc/swarm/apps.d/                     created empty
#   $PREFIX/share/swarm/examples/          node-web.conf, python-web.conf, apps/,
#                                          systemd/ (swarm-web.socket, notify-reload variant),
#                                          logrotate/swarm (for /etc/logrotate.d)
#   $PREFIX/share/man/man1/swarmd.1, swarmctl.1          generated from the argument parser
#   $PREFIX/share/bash-completion/completions/swarmd, swarmctl
#   $PREFIX/share/zsh/site-functions/_swarmd, _swarmctl
#   $PREFIX/share/fish/vendor_completions.d/swarmd.fish, swarmctl.fish
#   (by scripts/gen-docs.sh, which asks the built binaries; it builds
#   swift-argument-parser's generate-manual once, offline)
#
# apps.d is left empty on purpose: whatever is in it runs as soon as swarmd
# starts, and an example app would take port 8080 on a real host. The examples
# run from where they are installed (their cwd "." is the config file's folder):
# to try one, copy it into apps.d and set cwd to $PREFIX/share/swarm/examples.
# Nothing under /etc is overwritten. systemctl is not run.
set -eu

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-.build/release}
PREFIX=${PREFIX:-/usr/local}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DESTDIR=${DESTDIR:-}

bindir=$PREFIX/bin
exampledir=$PREFIX/share/swarm/examples
appsdir=/etc/swarm/apps.d

for b in swarmd swarmctl; do
    if [ ! -x "$BUILD_DIR/$b" ]; then
        echo "install.sh: $BUILD_DIR/$b not found (build with: swift build -c release)" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Point ExecStart= at the installed swarmd.
swarmd_path=$(printf '%s' "$bindir/swarmd" | sed 's/[#&\\]/\\&/g')
rewrite_unit() {
    sed "s#^ExecStart=/usr/local/bin/swarmd#ExecStart=$swarmd_path#" "$1" > "$tmp/$(basename "$1")"
    printf '%s\n' "$tmp/$(basename "$1")"
}

# copy_tree SRC DEST: install every file under SRC into DEST, keeping the
# executable bit (0755) or not (0644).
copy_tree() {
    (cd "$1" && find . -type f) | while IFS= read -r f; do
        f=${f#./}
        install -d -m 0755 "$2/$(dirname "$f")"
        if [ -x "$1/$f" ]; then mode=0755; else mode=0644; fi
        install -m "$mode" "$1/$f" "$2/$f"
    done
}

echo "install.sh: binaries -> $DESTDIR$bindir"
install -d -m 0755 "$DESTDIR$bindir"
install -m 0755 "$BUILD_DIR/swarmd" "$DESTDIR$bindir/swarmd"
install -m 0755 "$BUILD_DIR/swarmctl" "$DESTDIR$bindir/swarmctl"

echo "install.sh: units -> $DESTDIR$UNITDIR"
install -d -m 0755 "$DESTDIR$UNITDIR"
install -m 0644 "$(rewrite_unit systemd/swarmd.service)" "$DESTDIR$UNITDIR/swarmd.service"
install -m 0644 systemd/swarmd.socket "$DESTDIR$UNITDIR/swarmd.socket"

echo "install.sh: examples -> $DESTDIR$exampledir"
install -d -m 0755 "$DESTDIR$exampledir" "$DESTDIR$exampledir/systemd"
install -m 0644 etc/node-web.conf etc/python-web.conf "$DESTDIR$exampledir/"
copy_tree etc/apps "$DESTDIR$exampledir/apps"
install -m 0644 systemd/swarm-web.socket "$DESTDIR$exampledir/systemd/swarm-web.socket"
install -m 0644 "$(rewrite_unit systemd/swarmd-notify-reload.service.example)" \
    "$DESTDIR$exampledir/systemd/swarmd-notify-reload.service.example"

echo "install.sh: man pages and shell completions"
BUILD_DIR=$BUILD_DIR scripts/gen-docs.sh "$tmp/docs" >/dev/null
sharedir=$PREFIX/share
install -d -m 0755 "$DESTDIR$sharedir/man/man1" "$DESTDIR$sharedir/bash-completion/completions" \
    "$DESTDIR$sharedir/zsh/site-functions" "$DESTDIR$sharedir/fish/vendor_completions.d"
for b in swarmd swarmctl; do
    install -m 0644 "$tmp/docs/man/$b.1" "$DESTDIR$sharedir/man/man1/$b.1"
    install -m 0644 "$tmp/docs/completions/$b.bash" "$DESTDIR$sharedir/bash-completion/completions/$b"
    install -m 0644 "$tmp/docs/completions/_$b" "$DESTDIR$sharedir/zsh/site-functions/_$b"
    install -m 0644 "$tmp/docs/completions/$b.fish" "$DESTDIR$sharedir/fish/vendor_completions.d/$b.fish"
done
install -d -m 0755 "$DESTDIR$exampledir/logrotate"
install -m 0644 etc/logrotate/swarm "$DESTDIR$exampledir/logrotate/swarm"

if [ -d "$DESTDIR$appsdir" ]; then
    echo "install.sh: $DESTDIR$appsdir exists, left as it is"
else
    echo "install.sh: creating empty $DESTDIR$appsdir"
    install -d -m 0755 "$DESTDIR$appsdir"
fi

if [ -z "$DESTDIR" ]; then
    echo "install.sh: now run: systemctl daemon-reload && systemctl enable --now swarmd.socket swarmd.service"
fi
