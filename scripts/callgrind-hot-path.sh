#!/usr/bin/env bash
# Instructions per cache-hit GetItems for the whole `prism dev` process
# (docs/benchmarks.md, "Profile of the cache-hit hot path"): callgrind on
# prism dev, two open-loop windows of kv-get at 200/s and 400/s, 5 s each;
# (instructions of the 400/s window - those of the 200/s window) / 1000
# extra requests. `perf` has no counters in this VM; callgrind counts
# repeat within about 2 %.
#
#   apt-get install -y valgrind
#   cargo build --release -p prism-cli -p prism-loadtest
#   scripts/callgrind-hot-path.sh          # BIN=dir of the binaries
#   TARGET=echo scripts/callgrind-hot-path.sh
#
# TARGET=echo measures `prism-loadtest echo` the same way instead: the same
# tonic server answering GetItems with no work, i.e. what HTTP/2, tonic
# and tokio cost per request before any of the gateway's own code.
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
D=$(mktemp -d /tmp/cg.XXXX)
cd "$D"
L=$BIN/prism-loadtest
if [ "${TARGET:-gateway}" = echo ]; then
  valgrind --tool=callgrind --callgrind-out-file="$D/cg.out.%p" --trace-children=no \
    "$L" echo --listen 127.0.0.1:27420 --value-size 100 > dev.log 2>&1 &
  VG=$!
  GW=127.0.0.1:27420
  # A bearer token shaped like `prism dev`'s (an HS256 JWT), which the echo
  # never checks: the request headers are the gateway's, HPACK and all.
  export PRISM_TOKEN=$(python3 -c 'import base64,json,os,time
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
claims = {"sub": "prism-dev", "roles": ["superuser"], "exp": int(time.time()) + 86400, "iat": int(time.time())}
print(b(json.dumps({"typ": "JWT", "alg": "HS256"}).encode()) + "." + b(json.dumps(claims).encode()) + "." + b(os.urandom(32)))')
  for i in $(seq 1 120); do (exec 3<>/dev/tcp/127.0.0.1/27420) 2>/dev/null && break; sleep 1; done
  $L run --target $GW --scenario kv-get --namespace loadtest/kv --keys 100 --no-preload --rate 100 --duration 5s --warmup 2s --quiet >/dev/null
else
valgrind --tool=callgrind --callgrind-out-file="$D/cg.out.%p" --trace-children=no \
  "$BIN/prism" dev --port 27400 --data-dir "$D/data" > dev.log 2>&1 &
VG=$!
for i in $(seq 1 120); do grep -q "export PRISM_TOKEN" dev.log 2>/dev/null && break; sleep 1; done
export PRISM_ENDPOINT=127.0.0.1:27400
export PRISM_TOKEN=$(grep "export PRISM_TOKEN" dev.log | cut -d= -f2)
P=$BIN/prism
$P tenant create loadtest >/dev/null
$P namespace create loadtest/kv --abstraction key-value --cache=true --wait --timeout 120s
SHARD=$($P namespace get loadtest/kv -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["shard_id"])')
case $SHARD in shard-0) GW=127.0.0.1:27401;; shard-1) GW=127.0.0.1:27402;; esac
echo "namespace on $SHARD ($GW)"
# Preload and warm both caches (records and tokens).
$L run --target $GW --scenario kv-get --namespace loadtest/kv --keys 100 --rate 100 --duration 5s --warmup 2s --quiet >/dev/null
fi
run() { $L run --target $GW --scenario kv-get --namespace loadtest/kv --keys 100 --no-preload --rate $1 --duration 5s --warmup 0s --quiet | tail -3; }
callgrind_control -z $VG >/dev/null; run 200; callgrind_control -d w200 $VG >/dev/null
callgrind_control -z $VG >/dev/null; run 400; callgrind_control -d w400 $VG >/dev/null
sleep 2
kill $VG; wait $VG 2>/dev/null || true
ir() { grep -E '^summary:' "$1" | awk '{print $2}'; }
w200=$(ir "$(grep -l 'Trigger: dump w200' "$D"/cg.out.*)")
w400=$(ir "$(grep -l 'Trigger: dump w400' "$D"/cg.out.*)")
echo "instructions: 200/s window $w200, 400/s window $w400"
echo "instructions per cache-hit request: $(( (w400 - w200) / 1000 ))"
rm -rf "$D"
