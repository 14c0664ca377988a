# The healthmon image: one image for every part (collect, speed, schedule, serve, mock, batch, up).
# docker-compose.yml runs one container per part; `docker run healthmon:0.1.0 <command>` runs one alone.
#
# Python 3.11 on Debian bookworm, the same Python and Java as the project's own machines, so the
# pinned versions in pyproject.toml behave the same here (pyspark 4.3 runs on Java 17).
# The front-end packages the API serves (uPlot, Swagger UI), as package-lock.json pins them.
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Spark (pyspark's JVM) needs Java 17+.  The man directory works around the JRE's postinst on
# slim images, which have no /usr/share/man.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/healthmon

# Dependencies first, read from pyproject.toml (the pinned list), so a code change does not
# re-download pyspark & co.  Then the project itself, without touching the dependencies again.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY healthmon/ healthmon/
COPY ingest/ ingest/
COPY batch_jobs/ batch_jobs/
COPY speed_jobs/ speed_jobs/
COPY scheduler/ scheduler/
COPY serving/ serving/
COPY mock_services/ mock_services/
COPY agent/ agent/
COPY alerting/ alerting/
RUN pip install --no-deps . && healthmon settings > /dev/null
COPY --from=web /web/node_modules/ node_modules/
ENV HEALTHMON_WEB_MODULES_DIR=/opt/healthmon/node_modules

# Not root.  The data directory belongs to the user, so a named volume mounted there (which Docker
# fills from the image's directory, ownership included) is writable by every healthmon container.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/healthmon healthmon \
    && mkdir -p /var/lib/healthmon \
    && chown healthmon:healthmon /var/lib/healthmon
ENV HEALTHMON_DATA_DIR=/var/lib/healthmon
USER healthmon
WORKDIR /var/lib/healthmon

# UDP ingest (collector) and the HTTP API (serving).  Inside a container the listeners must bind
# 0.0.0.0 (HEALTHMON_UDP_HOST / HEALTHMON_API_HOST), since they bind 127.0.0.1 by default.
EXPOSE 3500/udp 5555

ENTRYPOINT ["healthmon"]
CMD ["--help"]
