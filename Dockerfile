# One image for the operator and the workers (docs/operations.md#container-image):
#   proctor operator       the Kubernetes operator (the chart's and install.yaml's Deployment)
#   proctor worker         an EvalRun worker (the operator's default workerCommand)
#   proctor bench-worker   a BenchmarkSuite cell
# Build (Docker 23+ / BuildKit, which reads the heredoc below), reproducibly:
#   docker build --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" \
#     --output type=image,name=proctor/proctor:0.1.0,rewrite-timestamp=true .
# The tag is pyproject's version; manifests/install.yaml, the chart and the samples use it.
# Runs as uid/gid 10001 with a read-only root filesystem; /tmp is the only place it writes.
# The base is pinned by exact tag (no registry was reachable to resolve a digest here; mirrors
# that can should pin python:3.11.11-slim-bookworm@sha256:...). tests/test_dockerfile.py checks
# this file without a container engine.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# 1980-01-01, the earliest time a zip (wheel) holds, unless the build passes the commit's time.
ARG SOURCE_DATE_EPOCH=315532800
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Every runtime package at an exact version: the versions the test suite ran with. Generated from
# pyproject.toml's dependencies and the metamorphic-guard extra (the samples' Metamorphic Guard
# task needs it); tests/test_dockerfile.py says what to change when they drift. async-timeout is
# redis' backport for Pythons before 3.11.3: unused on this base, needed by e2e/build-image's
# Debian Python 3.11.2, and pinned here so that the two builds install the same list.
COPY <<EOF_PINS /build/constraints.txt
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-types==0.7.0
async-timeout==5.0.1
attrs==26.1.0
boto3==1.43.11
botocore==1.43.11
click==8.4.0
frozenlist==1.8.0
idna==3.13
iso8601==2.1.0
jmespath==1.1.0
jsonpatch==1.33
jsonpointer==3.1.1
kopf==1.45.2
markdown-it-py==4.3.0
mdurl==0.1.2
metamorphic-guard==3.6.0
multidict==7.2.1
numpy==2.4.6
nvidia-ml-py==13.615.71
prometheus-client==0.26.0
propcache==0.5.4
pyarrow==26.0.1
pydantic==2.13.4
pydantic-core==2.46.4
pygments==2.20.0
python-dateutil==2.9.0.post0
python-json-logger==4.2.0
pyyaml==6.0.3
redis==8.1.0
rich==15.0.0
s3transfer==0.17.0
six==1.17.0
structlog==26.1.0
typing-extensions==4.15.0
typing-inspection==0.4.2
urllib3==2.7.0
yarl==1.25.1
zstandard==0.25.0
EOF_PINS
WORKDIR /build
COPY pyproject.toml README.md ./
COPY operator ./operator
# The wheel, built with pinned build tools and no network isolation (reproducible zip timestamps
# from SOURCE_DATE_EPOCH), then a virtual environment without pip holding it and its pins.
RUN pip install --no-compile setuptools==80.9.0 wheel==0.45.1 \
 && pip wheel --no-deps --no-build-isolation --wheel-dir /build/dist . \
 && python -m venv --without-pip /opt/proctor \
 && pip --python /opt/proctor/bin/python install --no-compile --no-deps \
      --requirement /build/constraints.txt \
 && pip --python /opt/proctor/bin/python install --no-compile --no-deps /build/dist/proctor-*.whl \
 && pip --python /opt/proctor/bin/python check \
 && python -m compileall -q --invalidation-mode unchecked-hash /opt/proctor/lib \
 && /opt/proctor/bin/proctor --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="proctor" \
      org.opencontainers.image.description="Proctor operator and workers (proctor operator | worker | bench-worker)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/proctor/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=builder /opt/proctor /opt/proctor
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9090
ENTRYPOINT ["proctor"]
CMD ["--help"]
