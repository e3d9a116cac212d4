"""The second release's guards: sans-IO rules (failed_codes, idempotency, cache, quota) and, beside them,
the pipeline steps that apply them on the store (failed_code_hold, idempotency_hold, sparing)."""
