"""Talk to a running ``dssync serve`` over its loopback control endpoint.

The service writes ``HOME/run/serve.json`` (pid, address, token; mode 0600) when it starts
and removes it when it stops; a stale file (dead pid) counts as no service.
"""

from __future__ import annotations

import http.client
import json
import os
from typing import Any, BinaryIO

from dssync.appliance.control import H_TOKEN
from dssync.errors import BackendUnavailableError, ServiceError
from dssync.layout import service_file


class ControlClient:
    def __init__(self, address: str, token: str, pid: int) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port, self.token, self.pid = host, int(port), token, pid

    @classmethod
    def for_home(cls, home: str) -> ControlClient | None:
        try:
            with open(service_file(home), encoding="utf-8") as f:
                doc = json.load(f)
            os.kill(int(doc["pid"]), 0)
        except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
            return None
        return cls(doc["control"], doc["token"], int(doc["pid"]))

    def _request(self, method: str, path: str, body: BinaryIO | None = None, length: int = 0,
                 timeout: float = 600) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {H_TOKEN: self.token}
        if body is not None:
            headers["Content-Length"] = str(length)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnavailableError(f"the dssync service (pid {self.pid}) did not answer: {exc}",
                                          hint="check the service's log; restart it with 'dssync serve HOME'") from None
        finally:
            conn.close()
        doc = json.loads(data) if data else None
        if resp.status != 200:
            if isinstance(doc, dict) and "error" in doc:
                err = ServiceError(doc["error"], doc.get("hint"))
                err.exit_code = int(doc.get("exit_code", 1))
                raise err
            raise ServiceError(f"the service answered HTTP {resp.status}: {data[:200]!r}")
        return doc

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/status", timeout=30)
        return doc

    def offsets(self) -> dict[str, int]:
        doc: dict[str, int] = self._request("GET", "/v1/offsets", timeout=30)
        return doc

    def verify(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/verify", timeout=3600)
        return doc

    def digest(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/digest")
        return doc

    def lag(self) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("GET", "/v1/lag", timeout=60)
        return doc

    def rows(self) -> list[list[Any]]:
        doc: list[list[Any]] = self._request("GET", "/v1/rows")
        return doc

    def ingest(self, stream: BinaryIO, length: int) -> dict[str, Any]:
        doc: dict[str, Any] = self._request("POST", "/v1/ingest", stream, length)
        return doc

    def restart(self) -> None:
        self._request("POST", "/v1/restart", timeout=30)

    def stop(self) -> None:
        self._request("POST", "/v1/stop", timeout=30)
