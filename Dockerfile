# The stackgen image: `stackgen dispatcher`, `stackgen metrics-adapter` and
# `stackgen git-mirror refresh` run from it (see bases/). Non-root, and happy with a
# read-only root filesystem: nothing is written outside /tmp (an emptyDir in the pods).
#   docker build -t ghcr.io/stackgen/stackgen:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stackgen ./stackgen
COPY bases ./bases
COPY components ./components
COPY schemas ./schemas
# Resolve the package-data links into real files inside the wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[dispatcher]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'stackgen[dispatcher]' \
    && rm -rf /wheels
USER 65532:65532
EXPOSE 8080 6443
ENTRYPOINT ["stackgen"]
CMD ["--help"]
