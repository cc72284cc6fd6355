# dicomcast worker image. Configure it with DICOMCAST_* environment variables (see README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Optional parts: PostgreSQL state, the Azure, AWS and Google logins (`--build-arg EXTRAS=`
# for none of them).
ARG EXTRAS=postgres,azure,aws,google
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicomcast ./dicomcast
COPY mappings ./mappings
RUN pip install ".[${EXTRAS}]" && rm -rf /src \
    && useradd --system --uid 10001 --create-home --home-dir /data dicomcast

USER dicomcast
WORKDIR /data
# State lives in /data (mount a volume); point DICOMCAST_STATE_URL at PostgreSQL to share it.
ENV DICOMCAST_STATE_URL=sqlite:////data/dicomcast.db \
    DICOMCAST_HTTP_HOST=0.0.0.0 \
    DICOMCAST_HTTP_PORT=9464 \
    DICOMCAST_SOURCE_STORE_HOST=0.0.0.0
VOLUME ["/data"]
# /livez, /readyz and /metrics (Prometheus); see docs/operations.md. 11112: the C-STORE
# listener of a DIMSE source, when DICOMCAST_SOURCE_STORE_PORT=11112 turns it on. Bound to
# 0.0.0.0 so it can be published: an AE title is not a credential, so require client
# certificates (DICOM TLS) or let only the PACS reach it; the worker warns otherwise.
EXPOSE 9464 11112
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/livez', timeout=4)"]

ENTRYPOINT ["dicomcast"]
CMD ["run"]
