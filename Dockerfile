# One image for the trainer, the inference service and the MLflow server.
#   CPU (default):  docker build -t ml-platform:dev .
#   CUDA:           docker build -t ml-platform:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# CUDA base images carry no Python; the first RUN installs the distribution's python3 there.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
# checkov:skip=CKV_DOCKER_7:the base is a build argument whose default is pinned (python:3.11.14-slim-bookworm)
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.9.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The distribution decides the python3 version on a CUDA base, so apt packages are not pinned here.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# torch first, from the index that matches the base (CPU wheels are a tenth of the CUDA ones).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The project's dependencies next, from pyproject.toml alone: this layer is rebuilt only when the declared
# dependencies change, not when the project's code does.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = ("trainer", "inference", "server", "controllers", "launcher"); \
print("\n".join(sorted({d for e in extras for d in p["optional-dependencies"][e]} | set(p["dependencies"]))))' \
        > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY tinygpt ./tinygpt
COPY trainer ./trainer
COPY inference ./inference
COPY workloads ./workloads
COPY trainop ./trainop
COPY skyrun ./skyrun
# The project itself; its dependencies are already installed above (the same extras). A local path has no pin.
# pyproject.toml names README.md as the package's long description: an empty one serves, so that an edit of the
# README rebuilds no image.
# hadolint ignore=DL3013
RUN touch README.md \
    && pip install --no-deps ".[trainer,inference,server,controllers,launcher]"

USER 10001:10001
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; each pod spec has its own probes, and this one image runs three different processes (trainer, inference, MLflow)
EXPOSE 8080 5000 29500
CMD ["python", "-m", "inference", "serve"]
