"""A TLS client relay for test phones.  Debian's sipp is built without
OpenSSL (``-t l1``: "To use a TLS transport you must compile SIPp with
OpenSSL"), so a test phone speaks SIP over TCP to this relay on loopback,
which carries every byte over TLS to the engine: what the engine sees on
the wire is a TLS connection, as from a TLS phone.  A phone keeps its
connection while it is registered (an engine drops the contacts of a
connection that closes), so the engine side stays open when sipp exits."""
from __future__ import annotations

import socket
import ssl
import threading


class TLSRelay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE          # the test's self-signed certificate
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.connections = 0
        self.open: list[ssl.SSLSocket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                plain, _ = self.srv.accept()
            except OSError:
                return
            try:
                secure = self.ctx.wrap_socket(socket.create_connection(self.target, timeout=10))
            except OSError:
                plain.close()
                continue
            secure.settimeout(None)
            self.connections += 1
            self.open.append(secure)
            threading.Thread(target=self._pump, args=(plain, secure, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(secure, plain, True), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, engine_side: bool) -> None:
        """Copy src to dst.  From the engine (engine_side): after the phone
        went, keep reading (and dropping) so the engine's connection — and
        the contact bound to it — lives on until the engine closes it."""
        phone_gone = False
        try:
            while data := src.recv(65536):
                if phone_gone:
                    continue
                try:
                    dst.sendall(data)
                except OSError:
                    if not engine_side:
                        raise
                    phone_gone = True
        except OSError:
            pass
        for s in (src, dst) if engine_side else (src,):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.srv.close()
        for s in self.open:
            try:
                s.close()
            except OSError:
                pass
