#!/usr/bin/env bash
# Build (once, cached) a fresh Debian bookworm tree for the deployment test
# (issue 12): what a new application / database host looks like before the
# Ansible roles run — the release's python3 (the wheels dustel ships are
# cp311, bookworm's python is 3.11) and what Ansible needs on a target
# (python3-apt for the apt module, python3-packaging for the pip module,
# python3-psycopg2 for community.postgresql, acl), plus the packages the
# roles install (postgresql, python3-venv, systemd for systemd-analyze
# verify), so that the roles' apt tasks find them present and the test needs
# no network (the apt lists are kept, so the roles' cache_valid_time finds
# them fresh enough).  scripts/debian-tree.sh builds it (the host's mirror,
# a marker, idempotent); the test copies it and never changes the cached one.
#
#   scripts/deploy-tree.sh [DIR]      default: $DUSTEL_DEPLOY_TREE or
#                                      /var/cache/dustel/deploy-bookworm
set -euo pipefail
dir=${1:-${DUSTEL_DEPLOY_TREE:-/var/cache/dustel/deploy-bookworm}}
exec "$(dirname "$0")/debian-tree.sh" "deploy tree" "$dir" bookworm \
    python3,python3-venv,python3-packaging,python3-apt,python3-psycopg2,acl,postgresql,systemd,ca-certificates \
    --skip=cleanup/apt/lists
