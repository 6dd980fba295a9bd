"""The latency histogram of a load run: log-linear buckets (HDR-like), merged across workers,
read as percentiles within 1.6 %."""

from __future__ import annotations

#: Values below 2**_SUB_BITS ns have a bucket each; above, each power of two is
#: cut into 2**(_SUB_BITS - 1) buckets, so a bucket is at most 1/64 of its value.
_SUB_BITS = 7
_HALF = 1 << (_SUB_BITS - 1)
BUCKETS = (64 + 1) * _HALF + _HALF


def bucket_index(ns: int) -> int:
    bits = ns.bit_length()
    if bits <= _SUB_BITS:
        return ns
    shift = bits - _SUB_BITS
    return (shift << (_SUB_BITS - 1)) + (ns >> shift)


def bucket_range(index: int) -> tuple[int, int]:
    """The lowest value of bucket ``index`` and its width, in ns."""
    if index < 2 * _HALF:
        return index, 1
    shift = (index >> (_SUB_BITS - 1)) - 1
    top = index - (shift << (_SUB_BITS - 1))
    return top << shift, 1 << shift


percentile_names = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


class LatencyHistogram:
    """Counts of latencies (ns) in log-linear buckets; percentiles within 1.6 %."""

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.sum_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def record(self, ns: int, times: int = 1) -> None:
        """Count ``times`` requests that took ``ns`` nanoseconds."""
        if ns < 0:
            ns = 0
        bits = ns.bit_length()
        # bucket_index(), inlined: this runs once per reply batch
        self.counts[
            ns if bits <= _SUB_BITS else ((bits - _SUB_BITS) << (_SUB_BITS - 1)) + (ns >> (bits - _SUB_BITS))
        ] += times
        if not self.total or ns < self.min_ns:
            self.min_ns = ns
        if ns > self.max_ns:
            self.max_ns = ns
        self.total += times
        self.sum_ns += ns * times

    def merge(self, other: LatencyHistogram) -> None:
        if not other.total:
            return
        if not self.total or other.min_ns < self.min_ns:
            self.min_ns = other.min_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        self.total += other.total
        self.sum_ns += other.sum_ns
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n

    def percentile(self, p: float) -> int:
        """The latency (ns) that ``p`` percent of the requests did not exceed."""
        if not self.total:
            return 0
        rank = max(1, -(-self.total * p // 100))  # ceil without floats going astray
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                low, width = bucket_range(i)
                middle = low + (width - 1) // 2
                return int(min(max(middle, self.min_ns), self.max_ns))
        return self.max_ns  # pragma: no cover - the counts always reach the total

    def summary_us(self) -> dict[str, float]:
        """Percentiles, mean, min and max in microseconds."""
        out = {name: round(self.percentile(p) / 1000, 1) for name, p in percentile_names.items()}
        out["mean"] = round(self.sum_ns / self.total / 1000, 1) if self.total else 0.0
        out["min"] = round(self.min_ns / 1000, 1)
        out["max"] = round(self.max_ns / 1000, 1)
        return out

    def to_state(self) -> tuple:
        sparse = {i: n for i, n in enumerate(self.counts) if n}
        return sparse, self.total, self.sum_ns, self.min_ns, self.max_ns

    @classmethod
    def from_state(cls, state: tuple) -> LatencyHistogram:
        sparse, total, sum_ns, min_ns, max_ns = state
        h = cls()
        for i, n in sparse.items():
            h.counts[i] = n
        h.total, h.sum_ns, h.min_ns, h.max_ns = total, sum_ns, min_ns, max_ns
        return h
