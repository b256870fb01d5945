#!/usr/bin/env bash
# Debian packages the test suite uses: sipp (sip-tester) for SIP traffic,
# mmdebstrap to build the Asterisk chroot, openssl for test certificates,
# poppler-utils (pdftoppm) to look at the invoice PDF, chromium and
# chromium-driver for the Kundencenter's browser test; the cluster test's
# parts (tests/cluster): Kamailio 5.6 with its PostgreSQL modules, and
# PostgreSQL 15's server binaries (initdb, pg_basebackup, pg_ctl) for the
# primary and its streaming standby.  Installs only what is missing;
# without root it says what is missing and leaves it to the engine tests to
# skip with that reason.
set -euo pipefail
missing=()
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
command -v sipp >/dev/null || missing+=(sip-tester)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v openssl >/dev/null || missing+=(openssl)     # test certificates for SIP over TLS
command -v pdftoppm >/dev/null || missing+=(poppler-utils)   # the invoice PDF rendered to an image (billing tests)
command -v chromium >/dev/null || missing+=(chromium)         # the Kundencenter's real-browser test (headless)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v kamailio >/dev/null || missing+=(kamailio)         # the SIP edge (cluster test)
installed kamailio-postgres-modules || missing+=(kamailio-postgres-modules)
installed postgresql-15 || missing+=(postgresql-15)             # primary + streaming standby (cluster test)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root, cannot install: ${missing[*]} (engine and cluster tests will skip)" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || echo "system-deps: apt-get update failed, trying the cached lists" >&2
apt-get install -y -qq "${missing[@]}" >/dev/null
# Debian starts the packaged services: the tests run their own instances on loopback
for svc in kamailio postgresql; do
    if [[ " ${missing[*]} " == *" $svc"* ]] && command -v service >/dev/null; then
        service "$svc" stop >/dev/null 2>&1 || true
    fi
done
