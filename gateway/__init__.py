"""Voucherify client-side gateway: exposes only Voucherify's client-side API to browsers, under a policy."""

__version__ = "0.1.0"
