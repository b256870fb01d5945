#!/usr/bin/env bash
# Debian packages the test suite uses: sipp (sip-tester) for SIP traffic,
# mmdebstrap to build the Asterisk chroot, openssl for test certificates,
# poppler-utils (pdftoppm) to look at the invoice PDF, chromium and
# chromium-driver for the Kundencenter's browser test.  Installs only what is missing;
# without root it says what is missing and leaves it to the engine tests to
# skip with that reason.
set -euo pipefail
missing=()
command -v sipp >/dev/null || missing+=(sip-tester)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v openssl >/dev/null || missing+=(openssl)     # test certificates for SIP over TLS
command -v pdftoppm >/dev/null || missing+=(poppler-utils)   # the invoice PDF rendered to an image (billing tests)
command -v chromium >/dev/null || missing+=(chromium)         # the Kundencenter's real-browser test (headless)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root, cannot install: ${missing[*]} (engine tests will skip)" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || echo "system-deps: apt-get update failed, trying the cached lists" >&2
apt-get install -y -qq "${missing[@]}" >/dev/null
