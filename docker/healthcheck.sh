#!/bin/bash
# HEALTHCHECK of the performerd image: GET /health on the daemon's own port and exit 0 on a 200.
# The image has no curl, so this uses bash's /dev/tcp. The address and port come from the same
# PERFORMERD_BIND / PERFORMERD_PORT variables the daemon reads (a wildcard bind means loopback).
port=${PERFORMERD_PORT:-8080}
host=${PERFORMERD_BIND:-127.0.0.1}
host=${host#[}; host=${host%]}
case $host in
    0.0.0.0 | '') host=127.0.0.1 ;;
    :: | ::0) host=::1 ;;
esac
{ exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || { echo "unhealthy: cannot connect to $host:$port" >&2; exit 1; }
printf 'GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 4 status <&3 || { echo "unhealthy: no answer from $host:$port" >&2; exit 1; }
status=${status%$'\r'}
case $status in
    'HTTP/1.'[01]' 200'*) exit 0 ;;
esac
echo "unhealthy: GET http://$host:$port/health answered '$status'" >&2
exit 1
