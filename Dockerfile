# CrossCT inference image: ONNX Runtime (CUDA execution provider in the gpu variant, else CPU), NumPy,
# scikit-image, tifffile, OpenCV (headless), the crossct package and weights/. No torch, no CUDA toolkit:
# the gpu variant carries only the NVIDIA runtime wheels that onnxruntime-gpu loads (cudart, cuBLAS,
# cuDNN, ...); the driver comes from the host through the NVIDIA container toolkit (--gpus).
#
#   make wheelhouse image            # CPU image "crossct"       (docs/container.md)
#   make wheelhouse-gpu image-gpu    # GPU image "crossct:gpu"
#   docker run --gpus all -v "$PWD/in:/inputs:ro" -v "$PWD/out:/outputs" crossct
#
# Offline build: wheels come from wheelhouse/<variant>/ in the build context (scripts/wheelhouse.sh);
# only when that folder is missing does pip fall back to the package index. BASE_IMAGE is any Debian-
# like image with Python 3.11 and its venv module (python3-venv), e.g. the debootstrapped base of
# scripts/docker_base.sh for an air-gapped build.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build
# cpu: requirements.txt; gpu: requirements-gpu.txt + onnxruntime-gpu[cuda,cudnn] (NVIDIA runtime wheels).
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_CONFIG_FILE=/tmp/build/pip.conf
# bash for arrays (hadolint: SHELL must follow ENV to be seen).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The glob lets the build go on without a wheelhouse (then pip uses the network).
COPY requirements*.txt wheelhouse/${VARIANT}* /tmp/build/
# With wheels in the context pip is told never to look at an index (also inside build isolation).
# Deleted, never used at run time: test suites inside the packages; cuFFT (240 MB; ONNX Runtime loads it
# only for FFT operators, which the U-Net does not have, and its preload_dlls() treats it as optional).
RUN if compgen -G "/tmp/build/*.whl" >/dev/null; then \
        printf '[global]\nno-index = true\nfind-links = /tmp/build\n' > /tmp/build/pip.conf; \
    else \
        echo "no wheelhouse/${VARIANT} in the build context: installing from the package index"; \
        : > /tmp/build/pip.conf; \
    fi \
 && case "${VARIANT}" in \
        cpu) reqs=(-r /tmp/build/requirements.txt); drop=() ;; \
        gpu) reqs=(-r /tmp/build/requirements-gpu.txt "onnxruntime-gpu[cuda,cudnn]"); drop=(nvidia-cufft) ;; \
        *) echo "VARIANT must be cpu or gpu, not '${VARIANT}'" >&2; exit 1 ;; \
    esac \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install "${reqs[@]}" \
 && if [ "${#drop[@]}" -gt 0 ]; then /opt/venv/bin/pip uninstall -y "${drop[@]}"; fi \
 && if /opt/venv/bin/pip show -q torch 2>/dev/null; then echo "torch must not be in the inference image" >&2; exit 1; fi \
 && find /opt/venv/lib/python3.11/site-packages -mindepth 2 -depth -type d -name tests -exec rm -rf {} +

COPY pyproject.toml README.md /src/
COPY crossct /src/crossct
COPY evaluate /src/evaluate
# Build isolation takes setuptools from the same wheelhouse, so this needs no network either.
RUN /opt/venv/bin/pip install --no-deps /src \
 && /opt/venv/bin/python -c "import crossct.cli, crossct.pipeline, onnxruntime, cv2, skimage, tifffile, scipy, edt" \
 && /opt/venv/bin/pip uninstall -y -q pip setuptools

FROM ${BASE_IMAGE}
ARG VARIANT=cpu
# The user the container runs as. A bind-mounted output folder must be writable by it: one that Docker
# creates on the fly (a missing host path) belongs to root, so a challenge submission whose organisers
# may do that can be built with --build-arg RUN_AS=0:0 (docs/container.md).
ARG RUN_AS=10001:10001
LABEL org.opencontainers.image.title="crossct" \
      org.opencontainers.image.description="Cell instance segmentation (CrossCT): /inputs images -> /outputs/<stem>_label.tiff" \
      org.opencontainers.image.licenses="Apache-2.0" \
      crossct.variant="${VARIANT}"
# Non-root user; /outputs and /workspace/outputs belong to it so named volumes start writable.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /workspace --shell /usr/sbin/nologin crossct \
 && mkdir -p /inputs /outputs /workspace/inputs /workspace/outputs \
 && chown crossct:crossct /outputs /workspace/outputs
COPY --from=build /opt/venv /opt/venv
COPY weights /opt/crossct/weights
COPY predict.sh /workspace/predict.sh
ENV PATH=/opt/venv/bin:$PATH \
    CROSSCT_WEIGHTS=/opt/crossct/weights \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /workspace
USER ${RUN_AS}
# Python turns SIGINT into a clean stop; as PID 1 it would ignore docker stop's default SIGTERM.
STOPSIGNAL SIGINT
# CMD, not ENTRYPOINT: the challenge runs `IMAGE /bin/bash -c "sh predict.sh"`.
CMD ["crossct-predict", "-i", "/inputs", "-o", "/outputs"]
