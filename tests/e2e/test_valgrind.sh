#!/usr/bin/env bash
# A short end-to-end run of bin/performerd under valgrind memcheck: a tiny model, requests on every
# kind of route (predict MISS/HIT, GET by id, score, embed, logits, errors, a small FASTA job with
# its result, a slow client cut by --connection-timeout), then SIGTERM. Passes when valgrind exits 0
# (--error-exitcode=99), reports "ERROR SUMMARY: 0 errors" and no definitely-lost bytes. No
# suppressions are needed (OpenBLAS, libgomp and libmicrohttpd report nothing here).
#
# valgrind runs a build of its own (build/valgrind, -O1, no -march: valgrind does not decode AVX-512,
# which -march=native may emit), and OMP_WAIT_POLICY and GOMP_SPINCOUNT are set so that performerd does not re-exec
# itself (pf_omp_passive) out from under valgrind. The valgrind build is the same under
# `make asan-test` (valgrind cannot run AddressSanitizer binaries); BIN only provides `performer init`.
set -u
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin}
if ! command -v valgrind >/dev/null; then
    apt-get install -y -q valgrind >/dev/null 2>&1 || { echo "SKIP: valgrind is not installed and cannot be installed"; exit 77; }
fi
VBIN=build/valgrind/bin
nice -n 10 make -s -j2 BIN=$VBIN OBJ=build/valgrind/obj OPT="-O1" $VBIN/performerd >/dev/null || { echo "FAIL: build"; exit 1; }

T=$(mktemp -d /tmp/performerd-valgrind-XXXXXX)
VP=
cleanup() { [ -n "$VP" ] && kill -9 "$VP" 2>/dev/null; [ -z "${KEEP_TMP:-}" ] && rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$T/vg.log" ] && tail -40 "$T/vg.log"; exit 1; }

"$BIN"/performer init --out "$T/m.safetensors" --seed 1 --layers 2 --d-model 32 --heads 4 --d-ff 64 --features 16 >/dev/null
t0=$SECONDS
OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000 valgrind --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    --error-exitcode=99 --track-fds=no --log-file="$T/vg.log" \
    $VBIN/performerd --bind 127.0.0.1 --port 0 --weights "$T/m.safetensors" --db "$T/db/cache.sqlite" \
    --threads 1 --http-threads 2 --connection-timeout 2 2>"$T/d.log" &
VP=$!
PORT=
for _ in $(seq 600); do
    PORT=$(grep -o '"msg":"listening".*"port":"[0-9]*"' "$T/d.log" 2>/dev/null | grep -o '"port":"[0-9]*"' | grep -o '[0-9]*')
    [ -n "$PORT" ] && break
    kill -0 $VP 2>/dev/null || fail "performerd exited at start-up: $(cat "$T/d.log")"
    sleep 0.1
done
[ -n "$PORT" ] || fail "performerd did not start under valgrind within 60 s"
U="http://127.0.0.1:$PORT"
J='Content-Type: application/json'
n=0
expect() {  # status, curl arguments...
    local want=$1; shift
    local got; got=$(curl -s -o "$T/body" -w '%{http_code}' --max-time 60 "$@")
    [ "$got" = "$want" ] || fail "curl $* -> $got, expected $want: $(head -c 300 "$T/body")"
    n=$((n+1))
}
expect 200 "$U/health"
expect 200 "$U/ready"
expect 200 -H "$J" -d '{"sequence": "MKT<mask>LLVAGH", "top_k": 3}' "$U/predict"
ID=$(grep -o '"id":"[0-9a-f]*"' "$T/body" | head -1 | grep -o '[0-9a-f]\{64\}')
expect 200 -H "$J" -d '{"sequence": "MKT<mask>LLVAGH", "top_k": 3}' "$U/predict"        # cache hit
expect 200 "$U/predict/$ID"
expect 304 -H "If-None-Match: \"$ID\"" "$U/predict/$ID"
expect 200 -H "$J" -d '{"sequences": ["MKTAYIAKQR", "GSSGKTT"], "mask_positions": [[2], [1, 3]]}' "$U/predict"
expect 200 -H "$J" -d '{"sequence": "MKTAYIAKQRQISFVK", "mutations": ["A4G", "K2R:T3N"]}' "$U/score"
expect 200 -H "$J" -d '{"sequence": "MKTAYIAK", "mutations": ["A4G"], "method": "pseudo-likelihood"}' "$U/score"
expect 200 -H "$J" -d '{"sequence": "MKTAYIAKQR", "representations": ["mean", "per_residue", "cls"], "layer": 1}' "$U/embed"
expect 200 -H "$J" -d '{"sequence": "MKTAYIAKQR"}' "$U/logits"
expect 422 -H "$J" -d '{"sequence": "MKJ"}' "$U/predict"
expect 400 -H "$J" -d '{"sequence": "MKT' "$U/predict"
expect 400 -H "$J" -d '{"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}' "$U/predict"
expect 404 "$U/nope"
expect 400 "$U/predict/xyz"
expect 415 -H 'Content-Type: text/plain' -d 'MKT' "$U/predict"
head -c 3000000 /dev/zero | tr '\0' 'A' > "$T/big"
expect 413 -H "$J" --data-binary @"$T/big" "$U/predict"
printf '>a\nMKTAYIAKQR\n>b\nGSSGKTTLLV\n>c\nMKTWLLV\n' > "$T/j.fasta"
expect 202 -H 'Content-Type: text/x-fasta' --data-binary @"$T/j.fasta" "$U/jobs?task=embed&representations=mean"
JOB=$(grep -o '"id":"[0-9a-f]*"' "$T/body" | head -1 | grep -o '[0-9a-f]\{64\}')
for _ in $(seq 300); do
    curl -s "$U/jobs/$JOB" | grep -q '"state":"done"' && break
    sleep 0.1
done
expect 200 "$U/jobs/$JOB/result"
[ "$(grep -c '"status":200' "$T/body")" = 3 ] || fail "job result: $(cat "$T/body")"
expect 200 "$U/jobs?limit=5"
expect 204 -X DELETE "$U/jobs/$JOB"
expect 200 "$U/metrics"
expect 200 "$U/model"
expect 200 "$U/openapi.json"
expect 200 "$U/"
# a client that sends half a request line and stalls is cut by the 2 s deadline (guard.c)
exec 3<>/dev/tcp/127.0.0.1/"$PORT"
printf 'GET /health HTTP/1.1\r\n' >&3
sleep 3
exec 3>&-
kill -TERM $VP
wait $VP
rc=$?
VP=
secs=$((SECONDS-t0))
grep -q '"msg":"stopped"' "$T/d.log" || fail "no clean stop in the log: $(tail -3 "$T/d.log")"
grep -q "ERROR SUMMARY: 0 errors" "$T/vg.log" || fail "valgrind found errors"
if ! grep -q "All heap blocks were freed" "$T/vg.log"; then
    grep -q "definitely lost: 0 bytes in 0 blocks" "$T/vg.log" || fail "valgrind found definitely lost memory"
fi
[ $rc -eq 0 ] || fail "valgrind exit status $rc (99 = errors or definite leaks)"
echo "valgrind: $n requests, clean exit, $(grep -o 'ERROR SUMMARY: [0-9]* errors' "$T/vg.log"),"\
     "$(grep -o 'definitely lost: [0-9,]* bytes' "$T/vg.log" || echo 'all heap blocks freed'), ${secs}s under valgrind"
grep -E "in use at exit|total heap usage" "$T/vg.log" | sed 's/^==[0-9]*== */    /'
