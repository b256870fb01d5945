"""Test harnesses that other parts (tests, benchmarks) share: a real
Asterisk in a Debian sid chroot; later the ESL emulator."""
