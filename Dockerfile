# One image for every service: `python -m storage_svc`, `python -m metadata_svc`,
# `python -m auth_svc`, `python -m ingest_svc`, `python -m dicomweb_gateway`,
# `python -m eventbus`, `python -m metadata_svc.migrate upgrade head`.

# Build stage: wheels for the pinned runtime dependencies.
FROM python:3.11.7-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
COPY requirements-runtime.txt /tmp/
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r /tmp/requirements-runtime.txt

# Final stage: no compilers, no pip cache, a non-root user.
FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/* \
 && rm -rf /wheels \
 && groupadd --gid 10001 dicom \
 && useradd --uid 10001 --gid dicom --no-create-home --shell /usr/sbin/nologin dicom
WORKDIR /app
COPY common ./common
COPY dicomcore ./dicomcore
COPY deidentify ./deidentify
COPY storage_svc ./storage_svc
COPY metadata_svc ./metadata_svc
COPY auth_svc ./auth_svc
COPY ingest_svc ./ingest_svc
COPY dicomweb_gateway ./dicomweb_gateway
COPY eventbus ./eventbus
COPY launcher ./launcher
RUN python -m compileall -q /app
USER 10001:10001
EXPOSE 8080 11112 50051 50052 50053 50054 9090
# Each Deployment names its service; alone, the image says so.
CMD ["python", "-c", "raise SystemExit('run one service, e.g. python -m dicomweb_gateway (see k8s/)')"]
