#!/usr/bin/env bash
# make docker-test: builds docker/Dockerfile with podman (no Docker engine needed) and runs the
# image end to end. Run as root; installs podman, runc, debootstrap, curl, jq, python3 when missing.
#
#  1. base image: when the Dockerfile's FROM image is not in local storage, it is made with
#     `debootstrap --variant=minbase bookworm` (trimmed like bookworm-slim) and `podman import`,
#     so the build needs no registry;
#  2. `podman build --isolation chroot --pull=never` (apt inside the build uses the host's mirror);
#     checks STOPSIGNAL, HEALTHCHECK, EXPOSE 8080, VOLUME /data, a non-root USER, no compiler in
#     the image, and that the performer CLI runs in it;
#  3. container 1 (runc, --network host, --read-only without tmpfs, a temporary /data, configured
#     only by PERFORMERD_* variables): waits for /health (the HEALTHCHECK's URL), runs the image's
#     HEALTHCHECK, checks performerd is PID 1 and not root and the root filesystem is read-only,
#     POST /predict, GET /predict/{id}, a CORS preflight; then `podman stop` (SIGTERM) while a
#     request is in flight: the request is answered and the container exits 0 in < 10 s;
#  4. container 2 on the same /data: GET /predict/{id} answers the stored result;
#  5. docker/nginx.conf (compose's proxy) in front of container 2, with Debian's nginx: GET by id,
#     X-Request-Id passed through, exactly one CORS header; then container 2 stops cleanly too.
#
# Environment: DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR (default: the host's apt sources),
# DOCKER_TEST_CACHE=0 (build without podman's layer cache; default 1 keeps the cached layers so a
# rerun only recompiles; `podman image prune` frees them), DOCKER_TEST_PROXY=0 (skip step 5),
# DOCKER_TEST_KEEP=1 (keep the image and the temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$SECONDS
log() { printf '[docker-test %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { printf '[docker-test %4ds] FAIL: %s\n' $((SECONDS - T0)) "$*" >&2; exit 1; }

DOCKERFILE=docker/Dockerfile
TAG=localhost/performer-protein:docker-test-$$
C1=performer-docker-test-$$-1
C2=performer-docker-test-$$-2
C3=performer-docker-test-$$-proxy
NGINX_TAG=localhost/performer-docker-test-nginx:$$
PROXY=${DOCKER_TEST_PROXY:-1}
CACHE=${DOCKER_TEST_CACHE:-1}
KEEP=${DOCKER_TEST_KEEP:-0}
WORK=""
ROOTFS=""
BUILT=0
CHILD=""   # a long step (debootstrap, build) runs in the background so that INT/TERM stop it at once

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and rootful podman need it): sudo make docker-test"
[ -f "$DOCKERFILE" ] || die "$DOCKERFILE not found"

# ---------------------------------------------------------------------------------------- cleanup
cleanup() {
    local rc=$?
    set +e
    if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
        log "stopping the running step (pid $CHILD)"
        kill -TERM "$CHILD"; wait "$CHILD"
    fi
    if [ $rc -ne 0 ]; then
        for c in "$C1" "$C2" "$C3"; do
            if podman container exists "$c" 2>/dev/null; then
                log "logs of $c (last 30 lines):"
                podman logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2
            fi
        done
    fi
    for c in "$C1" "$C2" "$C3"; do
        podman container exists "$c" 2>/dev/null && podman rm -f -v -t 0 "$c" >/dev/null 2>&1
    done
    if [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ]; then   # an interrupted debootstrap may leave mounts
        grep -o " $ROOTFS/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
        rm -rf --one-file-system "$ROOTFS"
    fi
    if [ "$KEEP" = 1 ]; then
        [ $BUILT = 1 ] && log "kept image $TAG"
        [ -n "$WORK" ] && log "kept $WORK"
    else
        [ $BUILT = 1 ] && podman rmi -f "$TAG" "$NGINX_TAG" >/dev/null 2>&1
        [ -n "$WORK" ] && rm -rf --one-file-system "$WORK"
    fi
    if [ $rc -eq 0 ]; then log "PASS (total $((SECONDS - T0)) s)"; else log "FAILED (exit $rc)"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------------------ tools
missing=()
for t in podman:podman runc:runc debootstrap:debootstrap curl:curl jq:jq python3:python3; do
    command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

WORK=$(mktemp -d /var/tmp/performer-docker-test.XXXXXX)
chmod 0755 "$WORK"
# crun fails on setrlimit and on the hybrid cgroup hierarchy here: runc, and no default ulimits.
printf '[containers]\ndefault_ulimits = []\n' > "$WORK/containers.conf"
export CONTAINERS_CONF=$WORK/containers.conf
RUN=(podman run --runtime runc --network host)

# The host's apt mirror (first URI of a paragraph/line for suite $1), used by debootstrap and the build.
host_mirror() {
    local suite=$1 f uri="" suites="" line
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        while IFS= read -r line || [ -n "$line" ]; do
            case $line in
                URIs:*) uri=$(awk '{print $2}' <<<"$line") ;;
                Suites:*) suites=" ${line#Suites:} " ;;
                Enabled:*[Nn]o*) suites="" ;;
                '') case $suites in *" $suite "*) [ -n "$uri" ] && { echo "$uri"; return; } ;; esac
                    uri=""; suites="" ;;
            esac
        done < <(cat "$f"; echo)
    done
    awk -v s="$suite" '$1 == "deb" && $0 !~ /\[/ && $3 == s {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}
bg() {   # bg LOG COMMAND...: runs COMMAND with its output in LOG, in the background, and waits for it
    local out=$1 rc=0
    shift
    "$@" > "$out" 2>&1 &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return $rc
}

MIRROR=${DEBIAN_MIRROR:-$(host_mirror bookworm)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECMIRROR=${DEBIAN_SECURITY_MIRROR:-$(host_mirror bookworm-security)}
SECMIRROR=${SECMIRROR:-http://deb.debian.org/debian-security}
log "apt mirrors: $MIRROR, $SECMIRROR"

# ------------------------------------------------------------------------------------- base image
mapfile -t stages < <(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if (tolower($i) == "as") print $(i + 1) }' "$DOCKERFILE")
mapfile -t bases < <(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' "$DOCKERFILE" | sort -u)
T_BASE=$SECONDS
for base in "${bases[@]}"; do
    printf '%s\n' "${stages[@]}" | grep -qxF "$base" && continue
    if podman image exists "$base"; then
        log "base image $base present"
        continue
    fi
    case $base in
        *debian:bookworm*) ;;
        *) die "no local image $base, and only debian:bookworm* bases can be made with debootstrap" ;;
    esac
    ROOTFS=$WORK/rootfs
    log "base image $base missing: debootstrap --variant=minbase bookworm ($MIRROR)"
    bg "$WORK/debootstrap.log" nice -n 10 timeout 900 debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" \
        || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
    # Trim it like the official bookworm-slim (no docs, man pages, locales; also for later packages).
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
        'path-exclude /usr/share/lintian/overrides/*' 'path-exclude /usr/share/linda/*' \
        > "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim"
    find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
        "$ROOTFS"/usr/share/lintian/overrides/*
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/apt/*.bin
    tar -C "$ROOTFS" -c . | podman import --quiet --change 'CMD ["bash"]' - "$base" >/dev/null \
        || die "podman import of the debootstrap tree as $base failed"
    rm -rf --one-file-system "$ROOTFS"; ROOTFS=""
    log "imported $base ($((SECONDS - T_BASE)) s)"
done
T_BASE=$((SECONDS - T_BASE))

# ------------------------------------------------------------------------------------------ build
T_BUILD=$SECONDS
layers=(--layers=true)
[ "$CACHE" = 1 ] || layers=(--layers=false --no-cache)
log "podman build -f $DOCKERFILE . -> $TAG"
BUILT=1
bg "$WORK/build.log" nice -n 10 timeout 1800 podman build --isolation chroot --pull=never --format docker "${layers[@]}" \
    --build-arg DEBIAN_MIRROR="$MIRROR" --build-arg DEBIAN_SECURITY_MIRROR="$SECMIRROR" \
    -f "$DOCKERFILE" -t "$TAG" . \
    || { tail -40 "$WORK/build.log" >&2; die "podman build failed (last lines above)"; }
T_BUILD=$((SECONDS - T_BUILD))
SIZE=$(podman image inspect -f '{{.Size}}' "$TAG")
log "built in $T_BUILD s; image size $((SIZE / 1000000)) MB"

cfg() { podman image inspect -f "{{json .Config.$1}}" "$TAG"; }
[ "$(cfg StopSignal)" = '"SIGTERM"' ] || [ "$(cfg StopSignal)" = '"15"' ] || die "STOPSIGNAL is $(cfg StopSignal), not SIGTERM"
jq -e '.Test | length > 0' <<<"$(cfg Healthcheck)" >/dev/null || die "image has no HEALTHCHECK"
jq -e 'has("8080/tcp")' <<<"$(cfg ExposedPorts)" >/dev/null || die "image does not EXPOSE 8080"
jq -e 'has("/data")' <<<"$(cfg Volumes)" >/dev/null || die "/data is not a VOLUME"

# ------------------------------------------------------------------------------------ image content
probe=(podman run --rm --runtime runc --network none --no-healthcheck --entrypoint /bin/sh "$TAG" -c)
IMG_UID=$("${probe[@]}" 'id -u') || die "cannot run a shell in the image"
[ "$IMG_UID" != 0 ] || die "the image's USER is root"
# shellcheck disable=SC2016  # the script runs in the image's shell
compilers=$("${probe[@]}" '
    for p in cc c89 c99 gcc g++ c++ cpp clang tcc ld ld.bfd ld.gold as make; do command -v "$p"; done
    ls -d /usr/bin/*-linux-gnu-gcc* /usr/lib/gcc/*/*/cc1* 2>/dev/null
    dpkg-query -W -f "\${db:Status-Abbrev} \${Package}\n" 2>/dev/null |
        awk "\$1 == \"ii\" && \$2 ~ /^(gcc(-[0-9]+)?|g\+\+(-[0-9]+)?|cpp(-[0-9]+)?|clang.*|tcc|binutils.*|libc6-dev|lib.*gcc.*-dev|build-essential|make)(:.*)?\$/ {print \"package \" \$2}"
    true') || die "cannot inspect the image for compilers"
[ -z "$compilers" ] || die "the image contains a compiler/toolchain: ${compilers//$'\n'/, }"
log "image: USER uid $IMG_UID, no compiler"
podman run --rm --runtime runc --network none --no-healthcheck --entrypoint performer "$TAG" \
    predict --weights /opt/performer/weights/model.safetensors --top-k 2 'MKT<mask>LLV' > "$WORK/cli.txt" 2>&1 \
    || { cat "$WORK/cli.txt" >&2; die "performer predict in the image failed"; }

# -------------------------------------------------------------------------------------- run tests
DATA=$WORK/data
mkdir -p "$DATA"
chown "$IMG_UID" "$DATA"   # as a named volume would be; the image's /data belongs to the same user
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ORIGIN=https://lab.example.org

start() {   # start NAME PORT: container on $DATA, configured only by environment variables
    "${RUN[@]}" -d --name "$1" --read-only --read-only-tmpfs=false -v "$DATA:/data" \
        -e PERFORMERD_BIND=127.0.0.1 -e PERFORMERD_PORT="$2" -e PERFORMERD_THREADS=1 \
        -e PERFORMERD_HTTP_THREADS=2 -e PERFORMERD_CORS_ORIGIN="$ORIGIN" "$TAG" >/dev/null 2>"$WORK/run-$1.err" \
        || { cat "$WORK/run-$1.err" >&2; die "podman run $1 failed"; }
    # (podman logs "unable to get systemd connection to add healthchecks" without systemd: the
    # periodic timer is not created, `podman healthcheck run` below runs the check itself.)
}
wait_health() {   # wait_health NAME URL: up to 60 s for a 200 from the HEALTHCHECK's URL
    for _ in $(seq 1 120); do
        curl -fsS -m 2 -o /dev/null "$2/health" 2>/dev/null && return 0
        [ "$(podman inspect -f '{{.State.Running}}' "$1")" = true ] \
            || die "$1 exited (code $(podman inspect -f '{{.State.ExitCode}}' "$1")) before /health answered"
        sleep 0.5
    done
    die "$2/health did not answer 200 within 60 s"
}
stop_clean() {   # stop_clean NAME: SIGTERM (the image's STOPSIGNAL), exit 0 well inside 10 s
    local t=$SECONDS code
    timeout 30 podman stop -t 10 "$1" >/dev/null 2>>"$WORK/run-$1.err" || { cat "$WORK/run-$1.err" >&2; die "podman stop $1 failed"; }
    t=$((SECONDS - t))
    code=$(podman inspect -f '{{.State.ExitCode}}' "$1")
    [ "$code" = 0 ] || die "$1 exited with code $code after SIGTERM (137 = killed after the 10 s grace)"
    [ $t -lt 10 ] || die "$1 took $t s to stop"
    podman logs "$1" 2>&1 | grep '"stopped"' | grep -q '"drain":"complete"' \
        || die "$1 did not log a complete drain: $(podman logs "$1" 2>&1 | grep '"stopped"')"
    log "$1: SIGTERM -> exit 0 in ${t} s"
}
hc() {   # the image's own HEALTHCHECK command, inside the container
    local out
    out=$(timeout 30 podman healthcheck run "$1" 2>&1) || die "HEALTHCHECK of $1 failed: $out"
}

T_RUN=$SECONDS
P1=$(free_port)
URL1=http://127.0.0.1:$P1
start "$C1" "$P1"
wait_health "$C1" "$URL1"
hc "$C1"
log "$C1 healthy on $URL1 (read-only root, /data = $DATA)"

status=$(podman exec "$C1" cat /proc/1/status) || die "podman exec $C1 failed"
exe=$(podman exec "$C1" readlink /proc/1/exe)
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' <<<"$status")
[ "$exe" = /usr/local/bin/performerd ] || die "PID 1 of $C1 is '$exe', not /usr/local/bin/performerd"
for u in $uids; do [ "$u" != 0 ] || die "performerd runs as root (Uid: $uids)"; done
log "performerd is PID 1 with uids $uids"
if podman exec "$C1" sh -c 'touch /opt/performer/x' 2>/dev/null; then die "root filesystem is writable"; fi

curl -fsS -m 5 "$URL1/ready" > /dev/null || die "/ready is not 200"
REQ='{"sequence": "MKTAYIAK<mask>RQISFVKSHFSRQ", "top_k": 3}'
code=$(curl -sS -m 60 -o "$WORK/post.json" -w '%{http_code}' -H 'Content-Type: application/json' -d "$REQ" "$URL1/predict") \
    || die "POST /predict failed"
[ "$code" = 200 ] || die "POST /predict answered $code: $(head -c 300 "$WORK/post.json")"
ID=$(jq -r .id "$WORK/post.json")
[[ $ID =~ ^[0-9a-f]{64}$ ]] || die "POST /predict returned no id: $(head -c 300 "$WORK/post.json")"
jq -e '.cached == false and (.results[0].predictions | length) == 1' "$WORK/post.json" >/dev/null \
    || die "unexpected POST /predict response: $(head -c 300 "$WORK/post.json")"
code=$(curl -sS -m 10 -o "$WORK/get1.json" -w '%{http_code}' "$URL1/predict/$ID") || die "GET /predict/$ID failed"
[ "$code" = 200 ] || die "GET /predict/$ID answered $code"
[ "$(jq -c .results "$WORK/get1.json")" = "$(jq -c .results "$WORK/post.json")" ] || die "GET /predict/$ID differs from the POST answer"
cors=$(curl -sS -m 5 -o /dev/null -D - -X OPTIONS -H "Origin: $ORIGIN" -H 'Access-Control-Request-Method: POST' \
    -H 'Access-Control-Request-Headers: content-type' "$URL1/predict" | tr -d '\r')
grep -qi "^access-control-allow-origin: $ORIGIN\$" <<<"$cors" || die "CORS preflight for $ORIGIN not allowed: $cors"
log "POST /predict -> id ${ID:0:16}..., GET by id, CORS preflight: ok"

# Graceful drain: a request in flight when SIGTERM arrives is still answered (2 x 12,000 residues on
# one thread; 2 x 30,000 outlasted the daemon's 7 s drain window with the 6-layer model), then the
# container exits 0.
rnd() { (set +o pipefail; tr -dc 'ACDEFGHIKLMNPQRSTVWY' < /dev/urandom | head -c "$1"); }
printf '{"sequences": ["%s", "%s"], "mask_positions": [[1], [2]], "top_k": 1}' "$(rnd 12000)" "$(rnd 12000)" > "$WORK/long.json"
curl -sS -m 30 -o "$WORK/long.out" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$WORK/long.json" "$URL1/predict" > "$WORK/long.code" 2>&1 &
LONG_PID=$!
inflight=no
for _ in $(seq 1 100); do
    if curl -fsS -m 2 "$URL1/metrics" 2>/dev/null | grep -q '^performerd_jobs_running [1-9]'; then inflight=yes; break; fi
    kill -0 $LONG_PID 2>/dev/null || break
    sleep 0.05
done
stop_clean "$C1"
wait $LONG_PID || die "the request in flight at SIGTERM failed: $(cat "$WORK/long.code")"
[ "$(cat "$WORK/long.code")" = 200 ] || die "the request in flight at SIGTERM answered $(cat "$WORK/long.code")"
log "request in flight at SIGTERM ($inflight): answered 200 before the exit"
[ -s "$DATA/cache.sqlite" ] || die "no database at /data/cache.sqlite after the stop"

P2=$(free_port)
URL2=http://127.0.0.1:$P2
start "$C2" "$P2"
wait_health "$C2" "$URL2"
code=$(curl -sS -m 10 -o "$WORK/get2.json" -w '%{http_code}' "$URL2/predict/$ID") || die "GET /predict/$ID on $C2 failed"
[ "$code" = 200 ] || die "GET /predict/$ID after the restart answered $code: $(head -c 300 "$WORK/get2.json")"
jq -e '.cached == true' "$WORK/get2.json" >/dev/null || die "GET after restart is not marked cached"
[ "$(jq -c .results "$WORK/get2.json")" = "$(jq -c .results "$WORK/post.json")" ] || die "stored result changed across the restart"
log "$C2 on the same /data: GET /predict/${ID:0:16}... -> 200, same result"

# docker/nginx.conf (compose.yaml's proxy) in front of $C2, with Debian's nginx: only the upstream
# address and the listen port are changed (no Docker DNS here).
if [ "$PROXY" = 1 ]; then
    mkdir -p "$WORK/nginx"
    printf '%s\n' 'FROM docker.io/library/debian:bookworm-slim' \
        'RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null && rm -rf /etc/nginx/sites-enabled/* /var/lib/apt/lists/*' \
        > "$WORK/nginx/Dockerfile"
    bg "$WORK/nginx/build.log" nice -n 10 timeout 600 podman build --isolation chroot --pull=never --layers=true \
        -t "$NGINX_TAG" "$WORK/nginx" || { tail -20 "$WORK/nginx/build.log" >&2; die "building the nginx test image failed"; }
    P3=$(free_port)
    sed -e "s|http://performerd:8080|$URL2|" -e "s|listen 80 default_server|listen 127.0.0.1:$P3 default_server|" \
        docker/nginx.conf > "$WORK/nginx/default.conf"
    grep -q "$URL2" "$WORK/nginx/default.conf" || die "docker/nginx.conf no longer proxies to http://performerd:8080"
    "${RUN[@]}" -d --name "$C3" -v "$WORK/nginx/default.conf:/etc/nginx/conf.d/default.conf:ro" \
        "$NGINX_TAG" nginx -g 'daemon off;' >/dev/null 2>>"$WORK/run-$C3.err" \
        || { cat "$WORK/run-$C3.err" >&2; die "podman run nginx failed"; }
    URL3=http://127.0.0.1:$P3
    for _ in $(seq 1 40); do curl -fsS -m 2 -o /dev/null "$URL3/health" 2>/dev/null && break; sleep 0.25; done
    curl -fsS -m 10 -o "$WORK/get3.json" -D "$WORK/get3.h" -H 'X-Request-Id: lab-app-42' "$URL3/predict/$ID" \
        || die "GET /predict/$ID through nginx failed"
    [ "$(jq -c .results "$WORK/get3.json")" = "$(jq -c .results "$WORK/post.json")" ] || die "nginx returned a different result"
    grep -qi '^x-request-id: lab-app-42' "$WORK/get3.h" || die "nginx did not pass X-Request-Id through"
    # gzip for clients that accept it (a /logits answer, over nginx's 1 KiB minimum); the weakened
    # ETag still gives a 304 on GET by id
    LREQ='{"sequence": "MKTAYIAKQRQISFVKSHFSRQ"}'
    curl -fsS -m 60 -o "$WORK/logits.json" -H 'Content-Type: application/json' -d "$LREQ" "$URL3/logits" \
        || die "POST /logits through nginx failed"
    curl -fsS -m 60 -o "$WORK/logits.gz" -D "$WORK/logitsgz.h" -H 'Accept-Encoding: gzip' \
        -H 'Content-Type: application/json' -d "$LREQ" "$URL3/logits" || die "POST /logits (gzip) through nginx failed"
    grep -qi '^content-encoding: gzip' "$WORK/logitsgz.h" || die "nginx did not gzip a $(wc -c <"$WORK/logits.json")-byte JSON answer"
    [ "$(gzip -dc "$WORK/logits.gz" | jq -c .results)" = "$(jq -c .results "$WORK/logits.json")" ] \
        || die "the gzipped /logits answer differs from the plain one"
    LID=$(jq -r .id "$WORK/logits.json")
    etag=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *//p' "$WORK/logitsgz.h" | tr -d '\r')
    case $etag in W/*) ;; *) log "note: nginx kept the ETag strong ($etag)";; esac
    code=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -H 'Accept-Encoding: gzip' -H "If-None-Match: $etag" \
        "$URL3/logits/$LID")
    [ "$code" = 304 ] || die "GET /logits/$LID with If-None-Match: $etag (the gzipped answer's ETag) through nginx answered $code, not 304"
    n=$(curl -sS -m 5 -o /dev/null -D - -X OPTIONS -H "Origin: $ORIGIN" -H 'Access-Control-Request-Method: POST' \
        "$URL3/predict" | grep -ci "^access-control-allow-origin: $ORIGIN") || true
    [ "$n" = 1 ] || die "CORS preflight through nginx: $n Access-Control-Allow-Origin headers for $ORIGIN (want 1)"
    code=$(curl -sS -m 5 -o /dev/null -w '%{http_code}' -X OPTIONS -H 'Origin: https://other.example' \
        -H 'Access-Control-Request-Method: POST' "$URL3/predict")
    [ "$code" = 403 ] || die "CORS preflight from another origin through nginx answered $code, not 403"
    # body limits: 2 MiB for the routes (nginx answers 413 in the API's shape), 16 MiB for /jobs
    # (a 3.5 MB FASTA body reaches performerd, which names the bad residue)
    python3 -c "import sys; sys.stdout.write('>a\n' + 'MK1T\n' * 700000)" > "$WORK/big.fa"
    code=$(curl -sS -m 30 -o "$WORK/big1.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        --data-binary @"$WORK/big.fa" "$URL3/predict")
    [ "$code" = 413 ] && jq -e '.error_type == "payload_too_large"' "$WORK/big1.json" >/dev/null \
        || die "a 3.5 MB POST /predict through nginx answered $code: $(head -c 300 "$WORK/big1.json")"
    code=$(curl -sS -m 60 -o "$WORK/big2.json" -w '%{http_code}' -H 'Content-Type: text/x-fasta' \
        --data-binary @"$WORK/big.fa" "$URL3/jobs?task=logits")
    [ "$code" = 422 ] && jq -e '.error_type == "invalid_residue"' "$WORK/big2.json" >/dev/null \
        || die "a 3.5 MB POST /jobs through nginx answered $code (want performerd's 422): $(head -c 300 "$WORK/big2.json")"
    python3 -c "import sys; sys.stdout.write('>a\n' + 'MKT\n' * 4500000)" > "$WORK/huge.fa"
    code=$(curl -sS -m 60 -o "$WORK/big3.json" -w '%{http_code}' -H 'Content-Type: text/x-fasta' \
        --data-binary @"$WORK/huge.fa" "$URL3/jobs?task=logits")
    [ "$code" = 413 ] && jq -e '.limit == "max_job_body"' "$WORK/big3.json" >/dev/null \
        || die "an 18 MB POST /jobs through nginx answered $code (want 413 max_job_body): $(head -c 300 "$WORK/big3.json")"
    podman rm -f -v -t 2 "$C3" >/dev/null 2>&1
    log "nginx (docker/nginx.conf) in front: GET by id, X-Request-Id, gzip and its weak ETag's 304, CORS preflight, body limits (2 MiB, /jobs 16 MiB): ok"
fi
stop_clean "$C2"
T_RUN=$((SECONDS - T_RUN))

log "timings: base image $T_BASE s, build $T_BUILD s, containers $T_RUN s; image size $((SIZE / 1000000)) MB ($SIZE bytes)"
