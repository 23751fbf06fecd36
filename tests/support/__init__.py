"""Real, reusable test helpers (servers, load generators) shared by the integration tests.

>>> from tests.support import LatencyServer, LoadThread
>>> with LatencyServer() as server, LoadThread(server.predict_url, rps=50):  # doctest: +SKIP
...     server.set_delay(0.2)
"""

from .servers import BUCKETS_S, HISTOGRAM, METRICS_MODES, LatencyServer, LoadThread, ServingProcess, free_port, free_ports

__all__ = ["BUCKETS_S", "HISTOGRAM", "METRICS_MODES", "LatencyServer", "LoadThread", "ServingProcess", "free_port", "free_ports"]
