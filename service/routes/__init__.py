"""The API's routers: jobs (submit, follow, cancel, download), the catalogue (methods, metrics,
models) and operations (health, Prometheus metrics)."""
