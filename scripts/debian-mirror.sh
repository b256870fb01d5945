#!/usr/bin/env bash
# Print the host's Debian mirror (the first non-security URI of its apt
# sources): the chroots the tests build use it, so no mirror host is ever
# written into the repository.  Exit 2 when none is found.
set -euo pipefail
sources=/etc/apt/sources.list.d/debian.sources
mirror=""
if [ -f "$sources" ]; then
    # First "URIs:" of a stanza whose Suites are not the security archive.
    mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && $0 !~ /security/ && u != "" {print u; exit}' "$sources")
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
    echo "no Debian mirror found in $sources or /etc/apt/sources.list" >&2
    exit 2
fi
echo "$mirror"
