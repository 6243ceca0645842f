#!/usr/bin/env bash
# Wheels of what tests/gpu/gpu_check.py needs and the GPU image lacks (Python 3.12, x86-64),
# into ${1:-.whl} at the repository root. The versions are the ones CI runs here.
#
#   bash tests/gpu/build_wheels.sh .whl       # then, on the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#
# DeepSpeed ships only a source archive: its wheel is built here with DS_BUILD_OPS=0 (no CUDA
# extension is compiled ahead of time; the ZeRO-2 bf16 path needs none). Everything else is a
# published wheel fetched with --no-deps: the list names each missing dependency itself.
set -euo pipefail
out=${1:-.whl}
mkdir -p "$out"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$out" "$@"
}
# compiled for cp312
fetch moderngl==5.13.0 glcontext==3.1.0 pydantic-core==2.46.4
# pure Python
fetch open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 webdataset==1.0.2 braceexpand==0.1.7 trimesh==5.2.0 \
      hjson==3.1.0 pydantic==2.13.4 annotated-types==0.7.0 typing-inspection==0.4.2
if ! ls "$out"/deepspeed-*.whl >/dev/null 2>&1; then
  src=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary=:all: -d "$src" deepspeed==0.19.8
  # --no-build-isolation: DeepSpeed's setup.py imports torch, and this one is already installed
  DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation -w "$out" "$src"/deepspeed-*.tar.gz
  rm -rf "$src"
fi
ls -l "$out"
