#!/usr/bin/env bash
# The caches the test suite needs, built (or found) before pytest starts, a
# line per step, so `make test` never sits silent for minutes while a
# chroot is built inside a test (issue 31).  Both live in /var/cache/dustel
# and are reused by every later run (README, Tests: the caches):
#   asterisk-sid       Debian sid with Asterisk 22 (~0.6 GB): the engine tests
#   deploy-bookworm    a fresh bookworm host (~0.4 GB): the deployment test
# Without root, or without a mirror, it says so and the tests that need a
# tree skip with that reason (pytest -ra prints it).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "test caches: not root, no Debian trees (the engine and deployment tests will skip)"
    exit 0
fi
for step in "asterisk chroot:scripts/asterisk-chroot.sh" "deployment tree:scripts/deploy-tree.sh"; do
    name=${step%%:*} script=${step#*:}
    start=$(date +%s)
    echo "test caches: $name ..."
    if "$script"; then
        echo "test caches: $name ready ($(( $(date +%s) - start )) s)"
    else
        echo "test caches: $name could not be built (the tests that need it will skip and say why)"
    fi
done
exit 0
