"""Call-time policy: a pure decision core and its FastAGI / outbound-ESL shells."""
