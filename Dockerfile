FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install . && useradd --system --uid 10001 --no-create-home gateway

# The policy is mounted from outside (-v ./config:/config:ro); secrets come from the environment
# (the policy refers to them as ${NAME}), never from the image.
ENV VOUCHERIFY_GATEWAY_CONFIG=/config/policy.yaml GATEWAY_HOST=0.0.0.0
USER gateway
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
CMD ["voucherify-gateway", "serve", "--host", "0.0.0.0"]
