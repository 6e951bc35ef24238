# syntax=docker/dockerfile:1
# The fhir-sched server: `docker build -t fhir-sched:local .`. How to run it (compose.yaml:
# PostgreSQL, the API with several workers, the HL7 listener, the keys as secrets, TLS in front)
# is in docs/deploy.md.
#
# Alone, it serves SQLite and keeps its database and keys in the /data volume:
#   docker run -e FHIRSCHED_ALLOW_REMOTE=true -p 127.0.0.1:8080:8080 -v fhirsched:/data fhir-sched:local
# FHIRSCHED_ALLOW_REMOTE is left to whoever runs it: it says a TLS proxy stands in front.

# Python 3.11 and Debian 12, as the tests run; pip installs the versions constraints.txt pins.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/fhir-sched/bin:$PATH
RUN python -m venv /opt/fhir-sched
WORKDIR /src
# The dependencies in a layer of their own: a change to the code does not install them again.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt
COPY . .
RUN pip install -c constraints.txt . \
    && pip check

FROM python:3.11.13-slim-bookworm
# pg_dump and pg_restore for `fhir-sched backup` and `restore` on PostgreSQL, of the major
# version compose.yaml runs (15, Debian 12's). Debian's security updates replace package
# versions, so they are not pinned (DL3008): the base image's tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fhirsched \
    && useradd --system --uid 10001 --gid fhirsched --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin fhirsched \
    && install -d -o fhirsched -g fhirsched -m 0700 /data
COPY --from=build /opt/fhir-sched /opt/fhir-sched
ENV PATH=/opt/fhir-sched/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FHIRSCHED_HOST=0.0.0.0 \
    FHIRSCHED_PORT=8080 \
    FHIRSCHED_HL7_HOST=0.0.0.0 \
    FHIRSCHED_HL7_PORT=2575 \
    FHIRSCHED_DATABASE_URL=sqlite:////data/fhir-sched.db \
    FHIRSCHED_KEY_FILE=/data/keys.json
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080 2575
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FHIRSCHED_PORT', '8080'), timeout=4)"]
CMD ["fhir-sched", "serve"]
