"""Prometheus metrics, read from the job store at scrape time (the counters live in the store,
so every API replica reports the same totals, whichever worker finished a job)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from jobs.store import DURATION_BUCKETS, JobStore
from service.dispatch import Dispatcher


class JobCollector(Collector):
    def __init__(self, store: JobStore, dispatcher: Dispatcher):
        self.store, self.dispatcher = store, dispatcher

    def collect(self) -> Iterator[Metric]:
        stats, durations = self.store.stats(), self.store.durations()
        jobs = CounterMetricFamily(
            "explainer_jobs", "Jobs submitted, and jobs by terminal state.", labels=["state"]
        )
        for state in ("submitted", "succeeded", "failed", "cancelled"):
            jobs.add_metric([state], stats.get(state, 0))
        yield jobs
        buckets = [
            ("+Inf" if bound == float("inf") else f"{bound:g}", durations.get(f"le_{bound}", 0))
            for bound in DURATION_BUCKETS
        ]
        yield HistogramMetricFamily(
            "explainer_job_duration_seconds", "Run time of finished jobs.",
            buckets=buckets, sum_value=durations.get("sum", 0),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "explainer_queue_length", "Jobs waiting for a worker.", self.dispatcher.queue_length()
        )
        yield GaugeMetricFamily(
            "explainer_workers", "Workers that answered a ping.", self.dispatcher.workers()
        )


def registry(store: JobStore, dispatcher: Dispatcher) -> CollectorRegistry:
    """A registry holding the job metrics (built per scrape: it is only a view of the store)."""
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(JobCollector(store, dispatcher))
    return collectors
