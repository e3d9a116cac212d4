FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The tracing extra (OpenTelemetry) comes in by default, so a policy's `tracing` works in the image;
# `--build-arg EXTRAS=` builds without it.
ARG EXTRAS=tracing
RUN pip install ".${EXTRAS:+[$EXTRAS]}" && useradd --system --uid 10001 --no-create-home gateway

# The policy is mounted from outside (-v ./config:/config:ro); secrets come from the environment
# (the policy refers to them as ${NAME}), never from the image.
ENV VOUCHERIFY_GATEWAY_CONFIG=/config/policy.yaml GATEWAY_HOST=0.0.0.0
USER gateway
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# Liveness on the admin listener (admin.port in the policy; 127.0.0.1 inside the container is enough).
# Slim images have no curl: Python's urllib does it. Set ADMIN_PORT if admin.port is not 9090.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ADMIN_PORT', '9090'), timeout=2)"
CMD ["voucherify-gateway", "serve", "--host", "0.0.0.0"]
