# Submission image for CVPR 2025 BiomedSegFM (interactive 3D segmentation).
# The organisers run: docker container run --gpus "device=0" -m 32G --rm
#   -v .../inputs/:/workspace/inputs/ -v .../outputs/:/workspace/outputs/
#   <team>:latest /bin/bash -c "sh predict.sh"
# BASE_IMAGE is overridden only by the local CI stand-in (tests/container/container_test.sh),
# whose base already holds the CPU torch wheel; with the default base, pip installs
# PyPI's default (CUDA) torch build from the ranges in requirements.txt.
ARG BASE_IMAGE=python:3.13-slim-bookworm
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /workspace

# Dependencies first, so that code changes do not re-run pip.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY app/ app/
COPY weights/ weights/
COPY predict.sh .
