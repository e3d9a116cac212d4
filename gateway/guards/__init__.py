"""Guards on what a client may make the gateway ask of Voucherify: sans-IO rules, one module each."""
