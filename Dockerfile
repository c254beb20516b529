# syntax=docker/dockerfile:1
# Build: the project and its dependencies into a venv. Run: that venv on a slim image, non-root,
# `careplan serve` (liveness: /healthz; readiness for an orchestrator: /readyz). No embedded servers or test
# tools: the `embedded` and `dev` extras stay out.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/careplan
COPY pyproject.toml README.md ./
COPY domain domain
COPY schemas schemas
COPY handlers handlers
COPY storage storage
COPY fhir_read fhir_read
COPY integrations integrations
COPY service service
RUN /opt/careplan/bin/pip install --no-cache-dir .

FROM python:3.11-slim AS runtime
# `docker build --build-arg CAREPLAN_BUILD_COMMIT=$(git rev-parse HEAD)`: `careplan --version` and the
# `careplan_build_info` metric name it.
ARG CAREPLAN_BUILD_COMMIT=""
RUN groupadd --system careplan && useradd --system --gid careplan --home-dir /nonexistent careplan
COPY --from=build /opt/careplan /opt/careplan
ENV PATH=/opt/careplan/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CAREPLAN_LOG_FORMAT=json \
    CAREPLAN_HTTP_HOST=0.0.0.0 \
    CAREPLAN_HTTP_PORT=8080 \
    CAREPLAN_BUILD_COMMIT=${CAREPLAN_BUILD_COMMIT}
USER careplan
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
# SIGTERM: /readyz turns 503, in-flight commands and requests get CAREPLAN_SHUTDOWN_GRACE_S (25 s) to
# finish, then the process exits 0. Give the container longer than that before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["careplan"]
CMD ["serve"]
