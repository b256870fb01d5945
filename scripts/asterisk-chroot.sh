#!/usr/bin/env bash
# Build (once, cached) a Debian sid chroot holding Asterisk 22 for the engine
# tests.  The mirror is read from the host's apt sources, never hard-coded.
#
#   scripts/asterisk-chroot.sh [DIR]      default: $DUSTEL_ASTERISK_CHROOT or
#                                          /var/cache/dustel/asterisk-sid
# Idempotent: an existing, complete chroot (marker file) is reused.
set -euo pipefail
dir=${1:-${DUSTEL_ASTERISK_CHROOT:-/var/cache/dustel/asterisk-sid}}
marker="$dir/.dustel-complete"
if [ -f "$marker" ] && [ -x "$dir/usr/sbin/asterisk" ]; then
    echo "asterisk chroot: cached at $dir"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "asterisk chroot: needs root (mmdebstrap, chroot)" >&2
    exit 2
fi
if ! command -v mmdebstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
if ! mirror=$("$(dirname "$0")/debian-mirror.sh"); then
    echo "asterisk chroot: no Debian mirror" >&2
    exit 2
fi
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' \
    --include=asterisk,asterisk-modules sid "$tmp" "$mirror"
chmod -R a+rX "$tmp/etc/asterisk"
touch "$tmp/.dustel-complete"
mv "$tmp" "$dir"
echo "asterisk chroot: built at $dir"
