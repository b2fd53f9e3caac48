# Container builds (docs/container.md). The wheelhouse makes "docker build" need no network.
#
#   make wheelhouse image                      CPU image  $(IMAGE)        from wheelhouse/cpu
#   make wheelhouse-gpu image-gpu              GPU image  $(IMAGE_GPU)    from wheelhouse/gpu
#   make image BASE_IMAGE=crossct-base:bookworm-py311     air-gapped: base from scripts/docker_base.sh
#   make image-gpu BUILD_FLAGS="--build-arg RUN_AS=0:0"      challenge submission (see docs/container.md)
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

.PHONY: check-weights wheelhouse wheelhouse-gpu image image-gpu base-image engine engine-stop test-container lint-docker

wheelhouse:
	scripts/wheelhouse.sh cpu wheelhouse/cpu

wheelhouse-gpu:
	scripts/wheelhouse.sh gpu wheelhouse/gpu

# The wheelhouse is made first if missing; "make wheelhouse" refreshes it.
wheelhouse/cpu/SHA256SUMS:
	scripts/wheelhouse.sh cpu wheelhouse/cpu

wheelhouse/gpu/SHA256SUMS:
	scripts/wheelhouse.sh gpu wheelhouse/gpu

check-weights:
	@test -f weights/model.onnx -a -f weights/model.json || { echo "weights/ has no model.onnx + model.json: the image would have no model (python -m crossct.export CHECKPOINT weights)" >&2; exit 1; }

image: check-weights wheelhouse/cpu/SHA256SUMS
	$(DOCKER) build --network none $(BUILD_ARGS) --build-arg VARIANT=cpu -t $(IMAGE) .
	@$(DOCKER) image inspect -f '$(IMAGE): {{.Size}} bytes' $(IMAGE)

image-gpu: check-weights wheelhouse/gpu/SHA256SUMS
	$(DOCKER) build --network none $(BUILD_ARGS) --build-arg VARIANT=gpu -t $(IMAGE_GPU) .
	@$(DOCKER) image inspect -f '$(IMAGE_GPU): {{.Size}} bytes' $(IMAGE_GPU)

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
