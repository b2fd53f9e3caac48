# CrossCT inference image: ONNX Runtime (CUDA execution provider in the gpu variant, else CPU), NumPy,
# scikit-image, tifffile, OpenCV (headless), the crossct package and weights/. No torch, no CUDA toolkit:
# the gpu variant carries only the NVIDIA runtime wheels that onnxruntime-gpu loads (cudart, cuBLAS,
# cuDNN, ...); the driver comes from the host through the NVIDIA container toolkit (--gpus).
#
#   make wheelhouse image            # CPU image "crossct"       (docs/container.md)
#   make wheelhouse-gpu image-gpu    # GPU image "crossct:gpu"
#   make submission TEAM=name        # GPU image "name:latest" -> name.tar.gz, checked as the organisers run it
#   docker run --gpus all -v "$PWD/in:/inputs:ro" -v "$PWD/out:/outputs" crossct
#
# Every wheel is pinned with its sha256 in requirements.lock / requirements-gpu.lock
# (scripts/lock_requirements.sh). Offline build: wheels come from wheelhouse/<variant>/ in the build
# context (scripts/wheelhouse.sh); only when that folder is missing does pip fall back to the package
# index, still bound to the lock's hashes. BASE_IMAGE is any Debian-like image with Python 3.11, its
# venv module (python3-venv) and util-linux (setpriv, mountpoint), e.g. the debootstrapped base of
# scripts/docker_base.sh for an air-gapped build.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm
# cpu: requirements.lock (onnxruntime); gpu: requirements-gpu.lock (onnxruntime-gpu + NVIDIA runtime wheels).
ARG VARIANT=cpu

FROM ${BASE_IMAGE} AS build
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_CONFIG_FILE=/tmp/build/pip.conf
# bash for compgen (hadolint: SHELL must follow ENV to be seen).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The glob lets the build go on without a wheelhouse (then pip uses the network).
COPY requirements*.lock wheelhouse/${VARIANT}* /tmp/build/
# With wheels in the context pip is told never to look at an index (also inside build isolation).
# --require-hashes: every wheel, dependencies included, must be in the lock with its sha256, so the
# image holds exactly the locked bytes. Test suites inside the packages are deleted (never used).
RUN if compgen -G "/tmp/build/*.whl" >/dev/null; then \
        printf '[global]\nno-index = true\nfind-links = /tmp/build\n' > /tmp/build/pip.conf; \
    else \
        echo "no wheelhouse/${VARIANT} in the build context: installing from the package index"; \
        : > /tmp/build/pip.conf; \
    fi \
 && case "${VARIANT}" in \
        cpu) lock=/tmp/build/requirements.lock ;; \
        gpu) lock=/tmp/build/requirements-gpu.lock ;; \
        *) echo "VARIANT must be cpu or gpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes -r "${lock}" \
 && if /opt/venv/bin/pip show -q torch 2>/dev/null; then echo "torch must not be in the inference image" >&2; exit 1; fi \
 && find /opt/venv/lib/python3.11/site-packages -mindepth 2 -depth -type d -name tests -exec rm -rf {} +

COPY pyproject.toml README.md /src/
COPY crossct /src/crossct
COPY evaluate /src/evaluate
# setuptools (the build backend) came from the lock: no build isolation, no network.
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/venv/bin/python -c "import crossct.cli, crossct.pipeline, onnxruntime, cv2, skimage, tifffile, scipy, edt" \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="crossct" \
      org.opencontainers.image.description="Cell instance segmentation (CrossCT): /inputs images -> /outputs/<stem>_label.tiff" \
      org.opencontainers.image.licenses="Apache-2.0"
# The user for output folders that belong to nobody else (a named volume starts as a copy of /outputs).
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /workspace --shell /usr/sbin/nologin crossct \
 && mkdir -p /inputs /outputs /workspace/inputs /workspace/outputs \
 && chown crossct:crossct /outputs /workspace/outputs
COPY --from=build /opt/venv /opt/venv
COPY weights /opt/crossct/weights
COPY predict.sh /workspace/predict.sh
COPY docker/entrypoint.sh /usr/local/bin/crossct-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    CROSSCT_WEIGHTS=/opt/crossct/weights \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /workspace
# No USER: the container starts as root only for the entry point to look at the output folder, which
# then runs the command as that folder's owner (root only when root owns it; docker/entrypoint.sh).
# The challenge runs `IMAGE /bin/bash -c "sh predict.sh"`: that replaces CMD and keeps the entry point.
ENTRYPOINT ["/usr/local/bin/crossct-entrypoint"]
CMD ["crossct-predict", "-i", "/inputs", "-o", "/outputs"]
# Python turns SIGINT into a clean stop; as PID 1 it would ignore docker stop's default SIGTERM.
STOPSIGNAL SIGINT

FROM runtime AS variant-cpu
LABEL crossct.variant="cpu"

# onnxruntime-gpu 1.31 and the locked runtime wheels are CUDA 13: the host needs an NVIDIA driver of
# release 580 or newer (CUDA 13.x minor-version compatibility). With an older driver, or none, the
# CUDA provider fails to start and the image runs on the CPU (one log line says so).
FROM runtime AS variant-gpu
LABEL crossct.variant="gpu" \
      crossct.cuda="13" \
      crossct.nvidia-driver-min="580"
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A stage of this file, not an image to pull (hadolint cannot see through the ARG).
# hadolint ignore=DL3006
FROM variant-${VARIANT}
