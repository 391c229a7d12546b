# One image for the operator, the sidecar and restore-init: `runsync operator|sidecar|restore-init`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar/ sidecar/
COPY operator/ operator/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "runsync==0.1.0" \
 && python -m runsync.botodata build \
 && useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin runsync
USER 65532:65532
ENTRYPOINT ["runsync"]
CMD ["--help"]
