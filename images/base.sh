#!/usr/bin/env bash
# The local base image, for a builder that cannot pull from Docker Hub: Debian bookworm (minbase) with Python 3.11,
# made with debootstrap from the Debian mirror apt already uses here, then `docker import`ed. Both Dockerfiles
# build on it with --build-arg BASE_IMAGE=<name> (`make build-images LOCAL_BASE=1` does all of it).
#
#   make base-image                        # = images/base.sh trm-base:bookworm-local
#   images/base.sh NAME                    # kept when NAME exists already (the cache between runs)
#   FORCE=1 images/base.sh NAME            # made again
#   DEBIAN_MIRROR=http://deb.debian.org/debian images/base.sh NAME
#
# Needs root, debootstrap and a running dockerd; about 40 s. The image also trusts this host's extra CA
# certificates (those under /usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's) and tells pip to
# use the system bundle, so that pip inside `docker build --network host` reaches PyPI as the host's pip does.
# Connected builders do not need any of this: the Dockerfiles default to public bases pinned by digest.
set -euo pipefail

name=${1:-trm-base:bookworm-local}
docker=${DOCKER:-docker}

$docker info >/dev/null 2>&1 || { echo "error: Docker does not answer: start dockerd (as root: dockerd &)" >&2; exit 1; }
if [ -z "${FORCE:-}" ] && $docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name exists (FORCE=1 $0 $name makes it again)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }

mirror_of_apt() {
  # The first Debian mirror in apt's sources (deb822 .sources files or one-line sources.list).
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}' \
          | grep -v -- '-security' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
mirror=${DEBIAN_MIRROR:-$(mirror_of_apt)}

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null

shopt -s nullglob
extra=(/usr/local/share/ca-certificates/*.crt)
if [ ${#extra[@]} -gt 0 ]; then
  cp "${extra[@]}" "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*

tar -C "$rootfs" -c . | $docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'CMD ["/bin/bash"]' \
  -m "debootstrap --variant=minbase bookworm (python3, python3-venv, ca-certificates)" - "$name" >/dev/null
echo "made base image $name ($($docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}'))"
