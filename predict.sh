#!/bin/sh
# The NeurIPS 2022 CellSeg convention: the organisers run
#   docker container run --gpus="device=0" -m 28g --rm -v $PWD/inputs/:/workspace/inputs/ \
#       -v $PWD/outputs/:/workspace/outputs/ IMAGE /bin/bash -c "sh predict.sh"
# from WORKDIR /workspace. Extra arguments are passed on (e.g. sh predict.sh --device cpu).
exec crossct-predict -i /workspace/inputs -o /workspace/outputs "$@"
