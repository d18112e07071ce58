# syntax=docker/dockerfile:1
#
# Image for the `feed` change-feed publisher (and its upstream simulator).
#
#   docker build -t feed .
#   docker run --rm feed config
#
# The entrypoint is the `feed` console script; the default command is `run`.
# Publisher state (SQLite) lives in /var/lib/feed, declared as a volume:
# mount persistent storage there or the snapshot is lost with the container.

ARG PYTHON_IMAGE=python:3.11-slim

###############################################################################
# Build stage: install the package and its dependencies into a virtualenv.
###############################################################################
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/feed
ENV PATH=/opt/feed/bin:$PATH

WORKDIR /src
# The build context is filtered by .dockerignore (no .venv, .git, caches).
COPY . .
RUN pip install . \
 && feed --help >/dev/null

###############################################################################
# Runtime stage: the virtualenv only, run as an unprivileged user.
###############################################################################
FROM ${PYTHON_IMAGE} AS runtime

ARG FEED_UID=10001
ARG FEED_GID=10001

LABEL org.opencontainers.image.title="feed" \
      org.opencontainers.image.description="Gumnut album-assets change-feed publisher (SQLite snapshot, Kafka events)"

RUN groupadd --system --gid "${FEED_GID}" feed \
 && useradd --system --uid "${FEED_UID}" --gid feed \
      --home-dir /var/lib/feed --no-create-home --shell /usr/sbin/nologin feed \
 && mkdir -p /var/lib/feed \
 && chown feed:feed /var/lib/feed \
 && chmod 0750 /var/lib/feed

COPY --from=build /opt/feed /opt/feed

ENV PATH=/opt/feed/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FEED_STATE__PATH=/var/lib/feed/state.sqlite3 \
    FEED_METRICS__HOST=0.0.0.0 \
    FEED_METRICS__PORT=9464

WORKDIR /var/lib/feed
VOLUME ["/var/lib/feed"]

# Metrics, /healthz and /readyz.
EXPOSE 9464

USER ${FEED_UID}:${FEED_GID}

# Liveness only (/healthz). The slim image has no curl, so use the stdlib.
# urlopen raises on connection errors and on HTTP status >= 400, so any
# failure exits non-zero. FEED_HEALTHCHECK_URL overrides the target (the
# simulator, for example, answers /healthz on its own port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('FEED_HEALTHCHECK_URL') or 'http://127.0.0.1:%s/healthz' % os.environ.get('FEED_METRICS__PORT', '9464'), timeout=4)"]

ENTRYPOINT ["feed"]
CMD ["run"]
