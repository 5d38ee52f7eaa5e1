#!/usr/bin/env bash
# Installs the Debian packages needed to build, run and test the project (run as root).
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential ca-certificates curl pkg-config \
    libmicrohttpd-dev libjansson-dev libopenblas-dev libopenblas-openmp-dev libsqlite3-dev libssl-dev \
    sqlite3 python3 clang libclang-rt-14-dev >/dev/null
