# The platform's images, one per role, from one Dockerfile (docs/getting-started.md builds both):
#   services (no torch): the MLflow server, the TrainingJob operator, the task launcher and the canary gate
#       docker build --target services -t ml-platform-services:dev .
#   platform (the last stage, the default): the trainer and the inference service, CPU or CUDA torch
#       docker build -t ml-platform:dev .
#       docker build -t ml-platform:cuda \
#         --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#         --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# CUDA base images carry no Python; the first RUN installs the distribution's python3 there.
# Every Python package comes from the lock, constraints.txt (torch's version included: TORCH_VERSION must equal it,
# tests/test_lockfile.py checks), so the images run what the test suite ran.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
# checkov:skip=CKV_DOCKER_7:the base is a build argument whose default is pinned (python:3.11.14-slim-bookworm)
FROM ${BASE_IMAGE} AS base

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


# Each role's requirements, from pyproject.toml alone: the stages below install them with the lock, in a layer
# that is rebuilt only when the declared dependencies change, not when the project's code does.
FROM base AS requirements
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
roles = {"services": ("server", "controllers", "launcher", "rollout"), "platform": ("trainer", "inference")}; \
[open(f"/tmp/requirements-{r}.txt", "w").write("\n".join(sorted({d for e in x for d in p["optional-dependencies"][e]} \
    | set(p["dependencies"]))) + "\n") for r, x in roles.items()]'


FROM base AS services
COPY --from=requirements /tmp/requirements-services.txt /tmp/requirements.txt
COPY pyproject.toml constraints.txt ./
RUN pip install --requirement /tmp/requirements.txt --constraint constraints.txt
# The operator validates train.yaml with the trainer's own rules (trainer/config.py, which imports no torch).
COPY tinygpt ./tinygpt
COPY trainer ./trainer
COPY workloads ./workloads
COPY trainop ./trainop
COPY skyrun ./skyrun
COPY rollout ./rollout
# The project itself, without dependencies (installed above). pyproject.toml names README.md as the package's long
# description: an empty one serves, so that an edit of the README rebuilds no image.
# hadolint ignore=DL3013
RUN touch README.md \
    && pip install --no-deps ".[server,controllers,launcher,rollout]" \
    && ! python3 -c 'import torch' 2>/dev/null
USER 10001:10001
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; each pod spec has its own probes, and this image runs four different processes (MLflow, operator, launcher, canary gate)
EXPOSE 5000 8000 8080 9090 9100
CMD ["python", "-m", "trainop"]


FROM base AS platform
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.15.0
# torch first, from the index that matches the base (CPU wheels are a tenth of the CUDA ones).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY --from=requirements /tmp/requirements-platform.txt /tmp/requirements.txt
COPY pyproject.toml constraints.txt ./
RUN pip install --requirement /tmp/requirements.txt --constraint constraints.txt
COPY tinygpt ./tinygpt
COPY trainer ./trainer
COPY inference ./inference
COPY workloads ./workloads
# hadolint ignore=DL3013
RUN touch README.md \
    && pip install --no-deps ".[trainer,inference]"
USER 10001:10001
# checkov:skip=CKV_DOCKER_2:Kubernetes ignores HEALTHCHECK; each pod spec has its own probes, and this image runs two different processes (trainer, inference)
EXPOSE 8080 29500
CMD ["python", "-m", "inference", "serve"]
