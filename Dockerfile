# One image for every shoploop service; the command picks the service:
#   docker run shoploop python -m services.ingest
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SHOPLOOP_ENV=production
WORKDIR /app

COPY pyproject.toml requirements.lock README.md ./
COPY libs ./libs
COPY services ./services
COPY deploy ./deploy
RUN pip install -c requirements.lock . && useradd --uid 10001 --no-create-home shoploop \
    && mkdir -p /var/lib/shoploop/funnel-copy && chown -R shoploop /var/lib/shoploop

USER shoploop
# Services bind 127.0.0.1 by default; in a container they must listen on every interface.
ENV SHOPLOOP_INGEST__HOST=0.0.0.0 SHOPLOOP_FUNNEL__HOST=0.0.0.0 SHOPLOOP_SEGMENTATION__HOST=0.0.0.0 \
    SHOPLOOP_CAMPAIGNS__HOST=0.0.0.0 SHOPLOOP_GATEWAY__HOST=0.0.0.0
EXPOSE 8000 8001 8002 8003 8004
CMD ["python", "-m", "services.ingest"]
