# Sourced by scripts/lock_requirements.sh and scripts/wheelhouse.sh: the pip options that select wheels
# for the image's Python rather than this host's. CPython 3.11; manylinux_2_28 .. manylinux2014, what pip
# on a glibc 2.36 image (Debian bookworm) accepts and what these packages ship; binary wheels only.
# shellcheck shell=bash
IMAGE_PIP_TARGET=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)
for _tag in manylinux_2_36_x86_64 manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
            manylinux_2_17_x86_64 manylinux2014_x86_64; do
    IMAGE_PIP_TARGET+=(--platform "$_tag")
done
unset _tag
