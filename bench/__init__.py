"""A reproducible benchmark of the gateway against a direct call, a bare aiohttp proxy and nginx (issue #6).

`python -m bench` starts every process itself (nginx stubs, redis-server, the contenders, wrk), runs the two
scenarios and prints the table; `python -m bench --smoke` does the same, smaller, in under a minute.
"""
