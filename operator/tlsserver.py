"""kopf's webhook server, serving a renewed certificate without closing its port.

kopf restarts its server when the files change: between the old socket's close and the new
one's bind, the API server's calls are refused, and with failurePolicy Fail so is the create
of every opted-in pod that falls in that moment. Here the listening context stays; each
renewal is loaded whole into a new context (the way kopf builds its own), and each connection
is handed the newest complete one as its handshake starts (OpenSSL's server-name callback,
which runs for every ClientHello, with or without a name). A pair that does not load is never
handed out: the current one stays served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl

import kopf

log = logging.getLogger(__name__)

_NEVER = 10.0 ** 9  # kopf's own file check, which restarts the server, is left asleep


class WebhookServer(kopf.WebhookServer):
    def __init__(self, *, reload_interval: float = 10, **kwargs) -> None:
        super().__init__(file_check_interval=_NEVER, **kwargs)
        self.reload_interval = reload_interval
        self._served: ssl.SSLContext | None = None
        self._digest_served: str | None = None

    def _build_ssl(self):
        """kopf's context, listened with; it hands each connection the pair served now."""
        digest = self._digest()  # before kopf reads the files: a renewal meanwhile is loaded again
        cadata, context = super()._build_ssl()
        if context is not None:
            self._served, self._digest_served = context, digest
            context.sni_callback = self._hand_over
        return cadata, context

    def _hand_over(self, connection: ssl.SSLObject, _name, _context) -> None:
        if connection.context is not self._served:
            connection.context = self._served

    async def __call__(self, fn):
        reloading = None
        try:
            async for client_config in super().__call__(fn):
                if reloading is None and self._served is not None and self.certfile and self.pkeyfile:
                    reloading = asyncio.create_task(self._reload_forever())
                yield client_config
        finally:
            if reloading is not None:
                reloading.cancel()

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                digest = self._digest()
                if digest == self._digest_served:
                    continue
                _, fresh = super()._build_ssl()  # a new context, as kopf makes it: raises if the pair does not match
            except (OSError, ssl.SSLError, ValueError) as err:
                log.warning(f"webhook: cannot load the certificate {self.certfile} with the key {self.pkeyfile} "
                            f"({err}); the current one is still served; retrying in {self.reload_interval:g} s")
                continue
            self._served, self._digest_served = fresh, digest  # one assignment: the next handshake takes it
            log.info(f"webhook: serving the renewed certificate {self.certfile}")

    def _digest(self) -> str | None:
        if not (self.certfile and self.pkeyfile):
            return None
        hasher = hashlib.sha256()  # not the key itself: only whether the files changed
        for path in (self.certfile, self.pkeyfile):
            with open(str(path), "rb") as f:
                hasher.update(f.read())
        return hasher.hexdigest()
