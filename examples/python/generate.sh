#!/usr/bin/env bash
# Generates the Python gRPC stubs of Prism's data APIs from proto/ into
# DIR (default: examples/python/gen), with grpcio-tools' bundled protoc.
#
#   pip install -r examples/python/requirements.txt
#   examples/python/generate.sh [DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../../proto"
out="${1:-$here/gen}"
mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$proto" --python_out="$out" --grpc_python_out="$out" \
    prism/kv/v1/kv.proto prism/timeseries/v1/timeseries.proto
echo "stubs in $out"
