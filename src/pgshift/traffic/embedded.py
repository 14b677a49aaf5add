"""``EmbeddedRouter``: drives a running ``pgshift proxy`` through its admin API.

Implements ``Router``, ``WriteRouting`` and ``WriteFence``, so the rollout engine can
steer a proxy that runs in another process (or on a thread: ``ThreadedProxy``).
"""

from __future__ import annotations

from typing import Any

import httpx

from pgshift.errors import UsageError
from pgshift.traffic.router import (
    Figures,
    RouterError,
    RouterUnreachable,
    Side,
    StaleRouterEpoch,
    check_side,
    check_weight,
)

__all__ = ["EmbeddedRouter", "RouterError", "RouterUnreachable"]


class EmbeddedRouter:
    """Admin-API client for the embedded proxy (``--admin`` address and ``--token``)."""

    def __init__(self, admin_url: str, token: str, *, timeout: float = 5.0) -> None:
        if not admin_url.startswith(("http://", "https://")):
            raise UsageError(f"--admin-url: {admin_url!r} is not an http:// URL",
                             hint="--admin-url http://127.0.0.1:9180")
        self.admin_url = admin_url.rstrip("/")
        self._http = httpx.Client(base_url=self.admin_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def fence_epoch(self, epoch: int) -> None:
        """Send ``epoch`` with every change from now on: the proxy refuses changes from a
        lower epoch once it has seen this one (``StaleRouterEpoch``)."""
        self._http.headers["X-Pgshift-Epoch"] = str(int(epoch))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmbeddedRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None,
              params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        try:
            resp = self._http.request(method, path, json=json, params=params,
                                      timeout=timeout or self._http.timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RouterUnreachable(
                f"embedded proxy admin API at {self.admin_url} unreachable: "
                f"{exc or type(exc).__name__}",
                hint="start it with: pgshift proxy --blue URL --green URL (or pass its "
                     "--admin-url)", operation=f"{method} {path}") from exc
        except httpx.HTTPError as exc:  # it took the request: what it did is unknown
            raise RouterError(f"embedded proxy admin API at {self.admin_url}: {method} {path} "
                              f"got no answer: {exc or type(exc).__name__}",
                              hint="check `pgshift traffic status` before retrying",
                              operation=f"{method} {path}") from exc
        if resp.status_code == 401:
            raise UsageError("the embedded proxy refused the admin token",
                             hint="pass the proxy's token: --token env:PGSHIFT_ADMIN_TOKEN")
        if resp.status_code != 200:
            try:
                msg = resp.json().get("error", resp.text)
            except ValueError:
                msg = resp.text
            cls = UsageError if resp.status_code == 400 else RouterError
            if resp.status_code == 409 and _is_stale(resp):
                raise StaleRouterEpoch(f"embedded proxy: {msg}", operation=f"{method} {path}",
                                       hint="another controller steers this rollout now: "
                                            "pgshift rollout status CUTOVER")
            if resp.status_code == 409:
                raise RouterError(f"embedded proxy: {msg}", operation=f"{method} {path}",
                                  hint="wait and hold again, or release the fence")
            raise cls(f"embedded proxy: {method} {path}: {msg}", operation=f"{method} {path}")
        return resp.json() if resp.headers.get("content-type", "").startswith(
            "application/json") else resp.text

    # Router
    def set_weight(self, pct: float) -> None:
        self._call("PUT", "/weight", {"weight": check_weight(pct)})

    def weight(self) -> float:
        return float(self.status()["weight"])

    def figures(self, window: float) -> Figures:
        return Figures.from_dict(self._call("GET", "/figures", params={"window": window}))

    def drain_to_blue(self) -> None:
        self._call("POST", "/rollback")

    # WriteRouting
    def set_system_of_record(self, side: Side) -> None:
        self._call("PUT", "/system-of-record", {"side": check_side(side)})

    def system_of_record(self) -> Side:
        return check_side(self.status()["system_of_record"])

    # WriteFence
    def hold(self, wait: float = 10.0) -> None:
        """Hold new writes and return once writes sent before are answered; ``RouterError``
        (fence still held) if some are still in flight after ``wait`` seconds."""
        self._call("POST", "/fence/hold", {"wait": wait}, timeout=wait + 5)

    def release(self) -> None:
        self._call("POST", "/fence/release")

    # extras
    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/status")
        return result

    def metrics(self) -> str:
        return str(self._call("GET", "/metrics"))


def _is_stale(resp: httpx.Response) -> bool:
    try:
        return bool(resp.json().get("stale_epoch"))
    except (ValueError, AttributeError):
        return False
