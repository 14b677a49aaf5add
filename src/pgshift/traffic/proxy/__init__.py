"""The embedded reverse proxy behind ``pgshift proxy`` (asyncio + uvloop + httptools)."""

from pgshift.traffic.proxy.app import Proxy, ThreadedProxy, run_foreground
from pgshift.traffic.proxy.config import Backend, HealthCheck, ProxyConfig, make_config

__all__ = ["Backend", "HealthCheck", "Proxy", "ProxyConfig", "ThreadedProxy", "make_config",
           "run_foreground"]
