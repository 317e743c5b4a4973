"""Prometheus metrics (``GET /metrics``): requests, latencies, tokens, and the scheduler's and batch's state."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily

disable_created_metrics()  # the *_created series only add noise to every counter
REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "qwen_requests", "HTTP requests answered by the API, by route and status", ["route", "status"], registry=REGISTRY
)
TTFT = Histogram(
    "qwen_time_to_first_token_seconds",
    "From the request's admission to its first streamed text",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ITL = Histogram(
    "qwen_inter_token_latency_seconds",
    "Between two text deltas of one reply",
    ["route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter("qwen_prompt_tokens", "Prompt tokens processed", ["route"], registry=REGISTRY)
COMPLETION_TOKENS = Counter("qwen_completion_tokens", "Tokens generated", ["route"], registry=REGISTRY)


class _State:
    """Gauges read at scrape time from the scheduler and the decode batch (nothing to keep in sync)."""

    def __init__(self):
        self.manager = None
        self.scheduler = None

    def collect(self):
        sched = self.scheduler.stats() if self.scheduler is not None else {}
        for name, key, doc in (
            ("qwen_replies_running", "active", "Replies holding a slot (generating)"),
            ("qwen_replies_waiting", "waiting", "Replies queued for a slot"),
            ("qwen_slots", "max_concurrent", "Replies generated at once at most (--concurrency)"),
        ):
            yield _gauge(name, doc, sched.get(key))
        engine = getattr(self.manager, "engine", None)
        batcher = getattr(engine, "_batcher", None)  # never builds a worker just to be scraped
        stats = batcher.stats() if batcher is not None and hasattr(batcher, "stats") else {}
        yield _gauge("qwen_batch_rows", "Rows in the decode batch now", stats.get("rows"))
        yield _gauge("qwen_batch_pending", "Replies submitted to the batch, not yet prefilled", stats.get("pending"))
        yield _gauge("qwen_batch_max_rows_seen", "Most rows decoded in one step so far", stats.get("max_rows_seen"))
        yield _gauge("qwen_batch_steps", "Decode steps run so far", stats.get("steps"))
        cache = stats.get("prefix_cache") or {}
        for key, value in sorted(cache.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield _gauge(f"qwen_prefix_cache_{key}", f"Prefix (KV) cache: {key}", value)


def _gauge(name: str, doc: str, value) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        family.add_metric([], float(value))
    return family


STATE = _State()
REGISTRY.register(STATE)


def bind(manager, scheduler) -> None:
    """Point the state gauges at this app's model manager and scheduler."""
    STATE.manager, STATE.scheduler = manager, scheduler


def render() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(REGISTRY)
