FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install ".[postgres,redis]"
COPY alembic.ini ./
COPY migrations ./migrations
COPY locales ./locales

# Never run as root; the SQLite database lives in the /app/data volume.
RUN useradd --create-home --uid 10001 starex && mkdir -p /app/data && chown starex /app/data
USER starex
VOLUME /app/data
EXPOSE 8080

# PORT as the operator set it (--env-file); the image's default otherwise.
HEALTHCHECK --interval=30s --timeout=5s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=3)"
CMD ["starex-bot"]
