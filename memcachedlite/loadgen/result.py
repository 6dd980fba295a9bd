"""What a load run measured: BenchResult, its rates and its dict form."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .config import LoadConfig
from .latency import LatencyHistogram


@dataclass
class BenchResult:
    """What a run measured. Rates are over ``elapsed``, the measured seconds."""

    config: LoadConfig
    processes: int
    elapsed: float = 0.0
    ops: int = 0
    gets: int = 0
    sets: int = 0
    keys: int = 0  # keys asked for by the measured gets
    hits: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    prefill_items: int = 0
    prefill_seconds: float = 0.0
    #: CPU seconds the load generator itself used while it ran (near ``processes``
    #: times the run time: the client, not the server, may be the limit).
    client_cpu: float = 0.0
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def ops_per_sec(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def keys_per_sec(self) -> float:
        return self.keys / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def client_cpu_percent(self) -> float:
        """The load generator's CPU use over the run, 100 per busy core."""
        seconds = self.config.warmup + self.elapsed
        return 100.0 * self.client_cpu / seconds if seconds > 0 else 0.0

    @property
    def misses(self) -> int:
        return self.keys - self.hits

    def latency_us(self) -> dict[str, float]:
        return self.histogram.summary_us()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "processes": self.processes,
            "elapsed": round(self.elapsed, 4),
            "ops": self.ops,
            "ops_per_sec": round(self.ops_per_sec, 1),
            "gets": self.gets,
            "sets": self.sets,
            "keys": self.keys,
            "keys_per_sec": round(self.keys_per_sec, 1),
            "hits": self.hits,
            "misses": self.misses,
            "latency_us": self.latency_us(),
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "error_samples": list(self.error_samples),
            "prefill_items": self.prefill_items,
            "prefill_seconds": round(self.prefill_seconds, 3),
            "client_cpu_percent": round(self.client_cpu_percent, 1),
        }
