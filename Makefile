# Container builds (docs/container.md). The wheelhouse makes "docker build" need no network.
#
#   make wheelhouse image                      CPU image  $(IMAGE)        from wheelhouse/cpu
#   make wheelhouse-gpu image-gpu              GPU image  $(IMAGE_GPU)    from wheelhouse/gpu
#   make image BASE_IMAGE=crossct-base:bookworm-py311     air-gapped: base from scripts/docker_base.sh
#   make submission TEAM=name [SAMPLES=DIR]    challenge submission: GPU image name:latest -> name.tar.gz,
#                                              checked with the organisers' own command line
#   make gpu-pack [DATA=../shared/data]       training pack + MONAI and edt wheels for a GPU host (scripts/gpu_recipe.sh)
#   make lock / make lock-gpu                  re-resolve requirements.lock / requirements-gpu.lock
#   make test-container                        the end-to-end test (.ci/run runs it)
#   make lint-docker                           hadolint
#
# DOCKER_HOST is honoured; scripts/docker_engine.sh starts a private engine when there is none.

IMAGE      ?= crossct:latest
IMAGE_GPU  ?= crossct:gpu
BASE_IMAGE ?=
BUILD_FLAGS ?=
BUILD_ARGS  = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(BUILD_FLAGS)
DOCKER     ?= docker
TEAM       ?=
SAMPLES    ?=
# bash with pipefail: "docker save | gzip" must fail when docker save does.
SHELL      := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: gpu-pack check-weights check-team wheelhouse wheelhouse-gpu lock lock-gpu image image-gpu submission base-image engine engine-stop test-container lint-docker

wheelhouse:
	scripts/wheelhouse.sh cpu wheelhouse/cpu

wheelhouse-gpu:
	scripts/wheelhouse.sh gpu wheelhouse/gpu

# The wheelhouse is made first if missing or older than its lock; "make wheelhouse" refreshes it.
wheelhouse/cpu/SHA256SUMS: requirements.lock
	scripts/wheelhouse.sh cpu wheelhouse/cpu

wheelhouse/gpu/SHA256SUMS: requirements-gpu.lock
	scripts/wheelhouse.sh gpu wheelhouse/gpu

# Only to move to newer versions (requirements*.txt): every wheel, pinned with its sha256.
lock:
	scripts/lock_requirements.sh cpu

lock-gpu:
	scripts/lock_requirements.sh gpu

check-weights:
	@test -f weights/model.onnx -a -f weights/model.json || { echo "weights/ has no model.onnx + model.json: the image would have no model (python -m crossct.export CHECKPOINT weights)" >&2; exit 1; }

image: check-weights wheelhouse/cpu/SHA256SUMS
	$(DOCKER) build --network none $(BUILD_ARGS) --build-arg VARIANT=cpu -t $(IMAGE) .
	@$(DOCKER) image inspect -f '$(IMAGE): {{.Size}} bytes' $(IMAGE)

image-gpu: check-weights wheelhouse/gpu/SHA256SUMS
	$(DOCKER) build --network none $(BUILD_ARGS) --build-arg VARIANT=gpu -t $(IMAGE_GPU) .
	@$(DOCKER) image inspect -f '$(IMAGE_GPU): {{.Size}} bytes' $(IMAGE_GPU)

# The organisers load TEAM.tar.gz and run TEAM:latest with --name TEAM: an image name in lower case
# (they lower-case the file name) and a container name, which Docker wants 2 characters long at least.
check-team:
	@[[ "$(TEAM)" =~ ^[a-z0-9]+((_|__|-+)[a-z0-9]+)*$$ && "$(TEAM)" == ??* ]] || { echo "make submission TEAM=name: 2 or more lower-case letters and digits, joined by '-' or '_' (got '$(TEAM)'; it becomes the organisers' image and container name)" >&2; exit 2; }

submission: check-team check-weights wheelhouse/gpu/SHA256SUMS
	$(DOCKER) build --network none $(BUILD_ARGS) --build-arg VARIANT=gpu -t $(TEAM):latest .
	$(DOCKER) save $(TEAM):latest | gzip > $(TEAM).tar.gz.part
	mv $(TEAM).tar.gz.part $(TEAM).tar.gz
	@ls -l $(TEAM).tar.gz
	scripts/check_submission.sh $(TEAM).tar.gz $(SAMPLES)

base-image:
	scripts/docker_base.sh

engine:
	scripts/docker_engine.sh start

engine-stop:
	scripts/docker_engine.sh stop

test-container:
	bash tests/docker/test_container.sh

lint-docker:
	hadolint Dockerfile

# Everything a GPU host without the data or MONAI needs for scripts/gpu_recipe.sh: the training pack
# (all of DATA in one file, 41 MiB) and the wheels of MONAI and edt. Travels with the checkout.
DATA ?= ../shared/data
# The GPU host's Python, for edt's compiled wheel.
GPU_PYTHON ?= 3.12
gpu-pack:
	mkdir -p gpu-pack
	python -m crossct.train pack --data $(DATA) --out gpu-pack/crossct-data.pack
	python -m pip download -q --no-deps monai==1.6.1 -d gpu-pack
	python -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 edt==3.1.2 -d gpu-pack
	@du -sh gpu-pack
