# syntax=docker/dockerfile:1
#
# MLLM Audit service image.
#
#   CPU (default):  docker build -t mllm-audit:cpu .
#   CUDA:           docker build --build-arg VARIANT=cuda -t mllm-audit:cuda .
#
# VARIANT=cpu   torch 2.13.0+cpu from the PyTorch CPU index; onnxruntime-gpu (a dependency in
#               pyproject.toml) then runs on its CPU execution provider.
# VARIANT=cuda  torch 2.13.0+cu130 from the PyTorch cu130 index: CUDA 13.0 and cuDNN 9
#               (nvidia-cudnn-cu13 9.20) arrive as NVIDIA's pip wheels, no CUDA base image needed.
#               onnxruntime-gpu 1.31.1 is built for CUDA 13.x + cuDNN 9, so its [cuda,cudnn] extras
#               resolve to the same CUDA 13 / cuDNN 9 wheels torch brought (one copy of each library).
#               A CUDA 12 (cu12x) torch would NOT work with onnxruntime-gpu 1.31.1 from PyPI, which
#               needs libcudart.so.13 and libcublas.so.13. The host needs an NVIDIA driver for
#               CUDA 13 (>= 580) and the NVIDIA container toolkit (docker run --gpus all).
# TORCH_INDEX_URL overrides the index VARIANT picks (a mirror, or another build of torch 2.13.0).
#
# The bundled reference model is baked in (package data of `mllm_audit.models.reference`), and
# MLLM_AUDIT_MODEL points at it. To serve another local Hugging Face checkpoint, mount it under
# /models and point MLLM_AUDIT_MODEL there, e.g.
#   docker run -p 8000:8000 -v /data/llava-1.5-7b-hf:/models/llava:ro \
#     -e MLLM_AUDIT_MODEL=/models/llava mllm-audit:cpu

ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# ---------------------------------------------------------------- builder: a venv at /opt/venv
FROM ${PYTHON_IMAGE} AS builder

ARG VARIANT=cpu
ARG TORCH_INDEX_URL=""
# Keep these equal to the pins in pyproject.toml (tests/test_deploy.py checks).
ARG TORCH_VERSION=2.13.0
ARG ONNXRUNTIME_VERSION=1.31.1
ARG DUMB_INIT_VERSION=1.2.5.post1

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index the variant needs, so that `pip install .` finds torch==2.13.0
# already satisfied and never pulls another build from PyPI.
RUN case "${VARIANT}" in \
      cpu)  default_index=https://download.pytorch.org/whl/cpu ;; \
      cuda) default_index=https://download.pytorch.org/whl/cu130 ;; \
      *)    echo "VARIANT must be cpu or cuda, got '${VARIANT}'" >&2; exit 1 ;; \
    esac \
 && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL:-$default_index}" "torch==${TORCH_VERSION}" \
 && if [ "${VARIANT}" = cuda ]; then \
      pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_VERSION}"; \
    fi \
 && pip install --no-cache-dir "dumb-init==${DUMB_INIT_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY explainers ./explainers
COPY models ./models
COPY mllm_audit ./mllm_audit

# The application and its pinned dependencies (pyproject.toml); then check that torch is still the
# build chosen above and that the reference model's weights made it into the package.
RUN pip install --no-cache-dir . \
 && python -c "import sys, torch; v = torch.__version__; sys.exit(0 if v.startswith('${TORCH_VERSION}') else 'torch ' + v + ' replaced ${TORCH_VERSION}')" \
 && python -c "import pathlib, sys, mllm_audit.models.reference as r; d = pathlib.Path(r.__file__).parent / 'weights'; sys.exit(0 if any(d.glob('*.safetensors')) else 'no reference weights in ' + str(d))"

# ---------------------------------------------------------------- runtime: slim, non-root
FROM ${PYTHON_IMAGE} AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="mllm-audit" \
      org.opencontainers.image.description="Audits multimodal LLM answers: attribution masks, visual reliance, hallucination risk" \
      io.mllm-audit.variant="${VARIANT}"

RUN groupadd --system --gid 10001 mllm \
 && useradd --system --uid 10001 --gid mllm --home-dir /home/mllm --create-home --shell /usr/sbin/nologin mllm \
 && mkdir -p /models \
 && chown mllm:mllm /models

COPY --from=builder /opt/venv /opt/venv

# HF_HOME and XDG_CACHE_HOME live under /tmp so the root filesystem can be read-only (mount a
# writable /tmp). Weights load from local directories only: the hub is never contacted.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MLLM_AUDIT_HOST=0.0.0.0 \
    MLLM_AUDIT_PORT=8000 \
    MLLM_AUDIT_MODEL=/opt/venv/lib/python3.11/site-packages/mllm_audit/models/reference/weights

# /models: mount point for other checkpoints (a LLaVA-1.5-7B directory at /models/llava, say).
WORKDIR /home/mllm
USER 10001:10001
EXPOSE 8000

# 200 only once the model is loaded; a large model on CPU can take minutes, hence the start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; k = os.environ.get('MLLM_AUDIT_API_KEY', ''); u.urlopen(u.Request('http://127.0.0.1:%s/livez' % os.environ.get('MLLM_AUDIT_PORT', '8000'), headers={'X-API-Key': k} if k else {}), timeout=4)"]

# dumb-init as PID 1 reaps LitServe's worker processes and forwards SIGTERM to the server alone
# (--single-child): the server stops its workers itself; a signal to the whole process group
# kills the queue manager under the workers and they die with tracebacks.
ENTRYPOINT ["dumb-init", "--single-child", "--", "mllm-audit"]
CMD ["serve"]
