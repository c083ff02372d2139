# The stackgen image: `stackgen dispatcher`, `stackgen metrics-adapter` and
# `stackgen git-mirror refresh` run from it (see bases/). Non-root, and happy with a
# read-only root filesystem: nothing is written outside /tmp (an emptyDir in the pods).
#
#   docker build -t ghcr.io/stackgen/stackgen:0.1.0 .          pip downloads from PyPI
#
# Offline (no registry, no network inside the build), as `bin/setup image-stackgen` does: a
# build context holding this Dockerfile and a wheels/ folder with stackgen's wheel and every
# dependency's (made on the host with `pip wheel '.[dispatcher]'`), and BASE_IMAGE any image
# with Python 3.11 and its venv module (there: Debian bookworm's python3 + python3-venv).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY . .
# Everything goes into a virtual environment, so the base's Python stays untouched (Debian's
# refuses pip installs) and the final stage copies one folder.
RUN set -eu; \
    python3 -m venv /opt/stackgen; \
    if [ -d wheels ]; then \
        /opt/stackgen/bin/pip install --no-cache-dir --no-index --find-links wheels 'stackgen[dispatcher]'; \
    else \
        /opt/stackgen/bin/pip install --no-cache-dir '.[dispatcher]'; \
    fi; \
    /opt/stackgen/bin/pip uninstall --yes --quiet pip; \
    /opt/stackgen/bin/stackgen --version

FROM ${BASE_IMAGE}
ENV PATH=/opt/stackgen/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/stackgen /opt/stackgen
USER 65532:65532
EXPOSE 8080 6443
ENTRYPOINT ["stackgen"]
CMD ["--help"]
