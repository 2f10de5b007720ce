#!/bin/sh
# Builds the agent's container image from deploy/container/Containerfile:
#   deploy/container/build.sh [TAG]        (default tls-detector:0.1.0)
# with podman, buildah or docker, whichever is found first (or $BUILDER). The agent is built
# by `cargo xtask build`; its shared libraries are copied from this host, where `ldd` finds
# them.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
tag=${1:-tls-detector:0.1.0}
builder=${BUILDER:-$(command -v podman || command -v buildah || command -v docker || true)}
if [ -z "$builder" ]; then
	echo "build.sh: no image builder: install podman (apt-get install podman) or buildah" >&2
	exit 1
fi

(cd "$root" && cargo xtask build)
bin=$root/target/release/detector

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
install -D -m 0755 "$bin" "$ctx/rootfs/usr/local/bin/detector"
# Every library the loader resolves, and the loader itself, at the path the binary expects.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
if [ -z "$libs" ]; then
	echo "build.sh: ldd found no libraries for $bin" >&2
	exit 1
fi
# Executable: the kernel opens the loader (PT_INTERP) for execution.
for lib in $libs; do
	install -D -m 0755 "$lib" "$ctx/rootfs$lib"
done

cp "$root/deploy/container/Containerfile" "$ctx/Containerfile"
case $(basename "$builder") in
buildah) "$builder" bud -t "$tag" -f "$ctx/Containerfile" "$ctx" ;;
*) "$builder" build -t "$tag" -f "$ctx/Containerfile" "$ctx" ;;
esac
echo "build.sh: built $tag"
