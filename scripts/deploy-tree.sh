#!/usr/bin/env bash
# Build (once, cached) a fresh Debian bookworm tree for the deployment test
# (issue 12): what a new application / database host looks like before the
# Ansible roles run — the release's python3 (the wheels dustel ships are
# cp311, bookworm's python is 3.11) and what Ansible needs on a target
# (python3-apt for the apt module, python3-packaging for the pip module,
# python3-psycopg2 for community.postgresql,
# acl), plus the packages the roles install (postgresql, python3-venv,
# systemd for systemd-analyze verify), so that the roles' apt tasks find them
# present and the test needs no network (the apt lists are kept, so the
# roles' cache_valid_time finds them fresh enough).  The mirror is the host's.
#
#   scripts/deploy-tree.sh [DIR]      default: $DUSTEL_DEPLOY_TREE or
#                                      /var/cache/dustel/deploy-bookworm
# Idempotent: an existing, complete tree (marker file) is reused; the test
# copies it and never changes the cached one.
set -euo pipefail
dir=${1:-${DUSTEL_DEPLOY_TREE:-/var/cache/dustel/deploy-bookworm}}
marker="$dir/.dustel-complete"
# the marker holds the package list: a tree built from another list is rebuilt
packages=python3,python3-venv,python3-packaging,python3-apt,python3-psycopg2,acl,postgresql,systemd,ca-certificates
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$packages" ]; then
    echo "deploy tree: cached at $dir"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "deploy tree: needs root (mmdebstrap, chroot)" >&2
    exit 2
fi
if ! command -v mmdebstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
fi
if ! mirror=$("$(dirname "$0")/debian-mirror.sh"); then
    echo "deploy tree: no Debian mirror" >&2
    exit 2
fi
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mmdebstrap --variant=apt --aptopt='Acquire::Check-Valid-Until "false"' --skip=cleanup/apt/lists \
    --include="$packages" \
    bookworm "$tmp" "$mirror"
echo "$packages" > "$tmp/.dustel-complete"
mv "$tmp" "$dir"
echo "deploy tree: built at $dir"
