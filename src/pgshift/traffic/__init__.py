"""Traffic: the Router seam and its implementations (embedded proxy, HAProxy).

See ``pgshift.traffic.router`` for the contracts and docs/traffic.md for operations.
"""

from pgshift.traffic.router import (
    BackendFigures,
    Figures,
    Router,
    Side,
    WriteFence,
    WriteRouting,
)

__all__ = ["BackendFigures", "Figures", "Router", "Side", "WriteFence", "WriteRouting"]
