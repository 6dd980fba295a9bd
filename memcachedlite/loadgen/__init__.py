"""The load generator behind ``mcl bench`` and ``benchmarks/run.py``: worker
processes driving many connections to any memcached-protocol server (text,
binary, or Redis's RESP), checking every reply and timing every request::

    from memcachedlite.loadgen import LoadConfig, run

    result = run(LoadConfig(port=9889, connections=50, duration=10, get_ratio=0.9))
    print(result.ops_per_sec, result.latency_us()["p99"], result.errors)

A client only: it imports nothing of the server.
"""

from .config import LoadConfig
from .latency import LatencyHistogram
from .result import BenchResult
from .runner import ConnectFailed, LoadError, run

__all__ = ["BenchResult", "ConnectFailed", "LatencyHistogram", "LoadConfig", "LoadError", "run"]
