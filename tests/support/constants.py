"""Values every test shares: the test project's credentials, its allowed origin and the headers a page sends."""

from __future__ import annotations

CLIENT_APP_ID = "client-app-id-7f3a"
CLIENT_TOKEN = "client-secret-token-9c1e"
ORIGIN = "https://shop.example.com"

H = {"Origin": ORIGIN}  # what a page on the allowed origin sends with every request
JSON_H = {**H, "Content-Type": "application/json"}  # and with a JSON body
