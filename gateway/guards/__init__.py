"""The second release's guards around Voucherify: sans-IO decisions the pipeline runs with its store."""
