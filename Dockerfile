# keyservice: production image. Build: docker build -t keyservice .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE alembic.ini constraints.txt ./
COPY src ./src
COPY migrations ./migrations
# The exact versions make test passed with (constraints.txt, `make lock`).
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt '.[server]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    KEYSERVICE_DATA_DIR=/var/lib/keyservice
RUN useradd --system --uid 10001 --home-dir /var/lib/keyservice --create-home keyservice
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'keyservice[server]' \
 && rm -rf /wheels
USER keyservice
WORKDIR /var/lib/keyservice
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
# Migrations run as their own step (see docker-compose.yml); workers = cores.
CMD ["keyservice", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-migrate"]
