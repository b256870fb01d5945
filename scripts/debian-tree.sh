#!/usr/bin/env bash
# Build (once, cached) a Debian tree with mmdebstrap for the tests: the
# Asterisk chroot and the deployment test's tree both come from here.  The
# mirror is the host's (debian-mirror.sh), never written into the repo.
#
#   scripts/debian-tree.sh NAME DIR SUITE PACKAGES [MMDEBSTRAP OPTION ...]
#
# Idempotent: the marker file holds what the tree was built from (suite,
# packages, options); a complete tree built from the same is reused, any
# other is rebuilt.  The tree is built aside and renamed into place.
set -euo pipefail
name=$1 dir=$2 suite=$3 packages=$4
shift 4
marker="$dir/.dustel-complete"
want="$suite $packages $*"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    echo "$name: cached at $dir"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "$name: needs root (mmdebstrap, chroot)" >&2
    exit 2
fi
if ! command -v mmdebstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
if ! mirror=$("$(dirname "$0")/debian-mirror.sh"); then
    echo "$name: no Debian mirror" >&2
    exit 2
fi
echo "$name: building $suite with mmdebstrap from $mirror into $dir (the first time takes minutes)"
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' "$@" \
    --include="$packages" "$suite" "$tmp" "$mirror"
echo "$want" > "$tmp/.dustel-complete"
mv "$tmp" "$dir"
echo "$name: built at $dir ($(du -sh "$dir" | cut -f1))"
