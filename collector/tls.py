"""TLS for ``serve``: a server context whose certificate can be replaced without a restart.

``serve --tls-cert FILE --tls-key FILE`` makes the collector speak HTTPS; with
``--tls-client-ca FILE`` every client must also show a certificate signed by that CA (mTLS).
A renewed certificate (certbot, an internal CA's cron job) is picked up on SIGHUP, and within
``WATCH_SECONDS`` of the files changing: the new pair is first loaded into a scratch context,
so a half-written or mismatched pair is refused with a log line and the old one keeps serving.
Connections already open keep the certificate they were made with; new handshakes get the new
one. The client CA is read at start only.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# How often the certificate files are looked at; a renewal shows within this long.
WATCH_SECONDS = 5.0


class TlsError(Exception):
    pass


def _stamp(path: Path) -> tuple[float, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size, st.st_ino)


class ServerTls:
    """The listening SSLContext (``context``), and what reloads its certificate chain."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.reloads_total = 0
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        if client_ca is not None:
            try:
                self.context.load_verify_locations(cafile=str(client_ca))
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"--tls-client-ca: cannot load {client_ca}: {exc}") from None
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._check_pair()
        self.context.load_cert_chain(str(cert), str(key))
        self._stamps = self._files()
        # The SIGHUP handler and the watcher both land here; one reload at a time.
        self._lock = threading.Lock()

    def _files(self) -> tuple[tuple[float, int, int] | None, ...]:
        return (_stamp(self.cert), _stamp(self.key))

    def _check_pair(self) -> None:
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key)):
            if not path.is_file():
                raise TlsError(f"{flag}: no file at {path}")
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            scratch.load_cert_chain(str(self.cert), str(self.key))
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(
                f"--tls-cert/--tls-key: cannot use {self.cert} with {self.key}: {exc}"
            ) from None

    def reload(self) -> bool:
        """Load the files again into the live context; False (and a log line) if unusable."""
        with self._lock:
            stamps = self._files()
            try:
                self._check_pair()
                self.context.load_cert_chain(str(self.cert), str(self.key))
            except (TlsError, OSError, ssl.SSLError) as exc:
                log.error("TLS certificate not reloaded, the old one stays: %s", exc)
                self._stamps = stamps  # do not retry the same broken files every few seconds
                return False
            self._stamps = stamps
            self.reloads_total += 1
        log.warning("TLS certificate reloaded from %s", self.cert)
        return True

    def changed(self) -> bool:
        return self._files() != self._stamps

    def on_sighup(self) -> None:
        """Reload on SIGHUP (call from the main thread, before the server starts)."""
        signal.signal(signal.SIGHUP, lambda _sig, _frame: self.reload())

    def watch(self, stop: threading.Event, every: float = WATCH_SECONDS) -> None:
        """Until ``stop``: when the files change, raise SIGHUP in this process, so the reload
        runs in the main thread, the one that also makes the handshakes."""
        while not stop.wait(every):
            if self.changed():
                os.kill(os.getpid(), signal.SIGHUP)
                # The handler updates the stamps; give it a moment before looking again.
                stop.wait(min(every, 1.0))
