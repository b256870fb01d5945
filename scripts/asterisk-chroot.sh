#!/usr/bin/env bash
# Build (once, cached) a Debian sid chroot holding Asterisk 22 for the engine
# tests (scripts/debian-tree.sh: the host's mirror, a marker, idempotent).
#
#   scripts/asterisk-chroot.sh [DIR]      default: $DUSTEL_ASTERISK_CHROOT or
#                                          /var/cache/dustel/asterisk-sid
set -euo pipefail
dir=${1:-${DUSTEL_ASTERISK_CHROOT:-/var/cache/dustel/asterisk-sid}}
"$(dirname "$0")/debian-tree.sh" "asterisk chroot" "$dir" sid asterisk,asterisk-modules
chmod -R a+rX "$dir/etc/asterisk"
