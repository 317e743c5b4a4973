# syntax=docker/dockerfile:1
#
# Qwen Chat, CPU image.
#
#   docker build -t qwen-chat:cpu .
#   docker run -p 7860:7860 -v /srv/models:/models:ro -v /srv/qwen-data:/data \
#     -e QWEN_MODEL=/models/Qwen-1_8B-Chat qwen-chat:cpu
#
# Weights are never baked in: they come from the read-only /models volume, and the image
# runs offline by default. Everything the app writes (personas, server-side histories,
# the key that encrypts browser-stored history, caches) goes to the /data volume.
# Every flag of app.py can be given as QWEN_* variable or appended to `docker run`.
# See docs/DEPLOY.md.

# ---------------------------------------------------------------------------------------
# builder: a virtual environment with torch (CPU) and the pinned requirements
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim-trixie AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A compiler and the PCRE2 headers are needed only here: PyPcre (pulled in by gptqmodel)
# is published as a source package and links libpcre2-8. Neither reaches the final image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libpcre2-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

ARG TORCH_VERSION=2.13.0
# torch alone first, from PyTorch's CPU wheel index: the torch on PyPI is the CUDA build
# and would drag in several GB of nvidia-* wheels. Its own layer, so requirement changes
# do not download it again.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"

# Then the app's requirements. torch==2.13.0 in requirements.txt is already satisfied by
# 2.13.0+cpu (a local version matches its public one), so nothing can swap the build.
COPY requirements.txt requirements-gptq.txt /tmp/requirements/
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        -r /tmp/requirements/requirements.txt \
        -r /tmp/requirements/requirements-gptq.txt \
    && python -c "import torch; assert not torch.version.cuda, 'a CUDA torch slipped in'"

# ---------------------------------------------------------------------------------------
# runtime: the venv and the app's own files, nothing else
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim-trixie AS runtime

ARG APP_UID=10001
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="qwen-chat" \
      org.opencontainers.image.description="Chat UI and OpenAI-compatible API for the first-generation Qwen chat models (CPU build)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-trixie"

# A fixed, unprivileged uid/gid: bind-mounted host folders can be chown'ed to it
# (chown 10001:10001 /srv/qwen-data), and orchestrators can check runAsNonRoot.
RUN groupadd --system --gid "${APP_UID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data /models \
    && chown app:app /data

COPY --from=builder /opt/venv /opt/venv

# PyPcre's libpcre2-8.so.0 is already in the base image (grep, an essential package, needs it).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/app \
    QWEN_HOST=0.0.0.0 \
    PORT=7860 \
    QWEN_OFFLINE=1 \
    QWEN_DATA_DIR=/data \
    QWEN_MODEL=/models/Qwen-1_8B-Chat \
    XDG_CACHE_HOME=/data/.cache \
    HF_HOME=/data/.cache/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1 \
    GRADIO_ANALYTICS_ENABLED=False

WORKDIR /app
COPY app.py ./
COPY qwen_core/ ./qwen_core/
COPY server/ ./server/
COPY ui/ ./ui/
COPY assets/ ./assets/

USER 10001:10001

VOLUME ["/data", "/models"]
# The port comes from $PORT (Spaces-style hosts set it); QWEN_PORT or --port win over it.
EXPOSE 7860

# Liveness, with the Python already in the image (no curl). Loading a model can take
# minutes, hence the long start period; /readyz tells when the model is loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('QWEN_PORT') or os.environ.get('PORT') or '7860'; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]

ENTRYPOINT ["python", "app.py"]
CMD []
