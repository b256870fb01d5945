#!/usr/bin/env bash
# The wheels the Ansible dustel role installs offline: dustel's own wheel,
# built now, and its dependencies' wheels, built once per pyproject.toml and
# cached (the cache key is the file's hash).
#
#   scripts/wheelhouse.sh OUT [PIP]     PIP default: .venv/bin/pip
set -euo pipefail
out=${1:?usage: wheelhouse.sh OUT [PIP]}
root=$(cd "$(dirname "$0")/.." && pwd)
pip=${2:-$root/.venv/bin/pip}
key=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
if [ -w /var/cache ] || [ "$(id -u)" = 0 ]; then base=/var/cache/dustel/wheelhouse; else base=${XDG_CACHE_HOME:-$HOME/.cache}/dustel/wheelhouse; fi
deps="$base/$key"
if [ ! -f "$deps/.complete" ]; then
    rm -rf "$deps.tmp"
    mkdir -p "$deps.tmp"
    "$pip" wheel -q -w "$deps.tmp" "$root"
    rm -f "$deps.tmp"/dustel-*.whl
    touch "$deps.tmp/.complete"
    rm -rf "$deps"
    mv "$deps.tmp" "$deps"
fi
rm -rf "$out"
mkdir -p "$out"
cp -l "$deps"/*.whl "$out"/ 2>/dev/null || cp "$deps"/*.whl "$out"/
"$pip" wheel -q --no-deps -w "$out" "$root"
echo "wheelhouse: $(ls "$out" | wc -l) wheels in $out"
