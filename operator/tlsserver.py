"""kopf's webhook server, with a renewed serving certificate loaded into the listening socket's
TLS context instead of a restart.

kopf restarts its server when the files change: between the old socket's close and the new
one's bind, the API server's calls are refused, and with failurePolicy Fail so is the create
of every opted-in pod that falls in that moment. An `ssl.SSLContext` can load a new pair in
place; each new connection takes the context's pair as it starts, so the port never closes.
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
        self._live: ssl.SSLContext | None = None

    def _build_ssl(self):
        cadata, context = super()._build_ssl()
        self._live = context  # the one kopf's TCPSite listens with
        return cadata, context

    async def __call__(self, fn):
        reloading = None
        try:
            async for client_config in super().__call__(fn):
                if reloading is None and self._live is not None and self.certfile and self.pkeyfile:
                    reloading = asyncio.create_task(self._reload_forever())
                yield client_config
        finally:
            if reloading is not None:
                reloading.cancel()

    async def _reload_forever(self) -> None:
        served = self._digest()
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                found = self._digest()
                if found == served:
                    continue
                # A pair read across the kubelet's swap, or a key written before its certificate,
                # does not match: tried on a spare context first, so the live one keeps serving.
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.certfile, self.pkeyfile)
                self._live.load_cert_chain(self.certfile, self.pkeyfile)
                served = found
                log.info(f"webhook: serving the renewed certificate {self.certfile}")
            except (OSError, ssl.SSLError) as err:
                log.warning(f"webhook: cannot load the certificate {self.certfile} with the key {self.pkeyfile} "
                            f"({err}); the current one is still served; retrying in {self.reload_interval:g} s")

    def _digest(self) -> str:
        hasher = hashlib.sha256()  # not the key itself: only whether the files changed
        for path in (self.certfile, self.pkeyfile):
            with open(str(path), "rb") as f:
                hasher.update(f.read())
        return hasher.hexdigest()
