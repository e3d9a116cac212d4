"""What the gateway leaves behind: accounting for each request, and the process's logs.

- `accounting`: `Accounting` queues each request's `Outcome` and hands batches to its sinks;
- `access`: the access-log sink (one line per request);
- `metrics`: the Prometheus sink and the multiprocess scrape (imports prometheus_client: import it
  only where metrics are served);
- `logs`: handlers, formatters and `configure_logging`, for the whole process.

This package's `__init__` imports nothing, so `gateway.serving` and the sandbox can use `logs` without
loading prometheus_client.
"""
