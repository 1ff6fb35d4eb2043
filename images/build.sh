#!/usr/bin/env bash
# Builds the images the chart runs by default, ghcr.io/mcpgate/mcpgate-{operator,proxy}:<the
# chart's appVersion>, from static (musl) release binaries without build-machine paths. File
# times and history are pinned to the commit's time, and each image is assembled twice and
# must come out with the same ID (a check of the assembly, not of a second compilation).
#   images/build.sh            binaries, checks, and images when buildah is installed
#   IMAGE_REGISTRY=registry.example.com/platform images/build.sh
# Checks every time: the binaries are static (no program interpreter, so they run on a
# `FROM scratch` image), run as a non-root user, and their names and tags are the chart's.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
REGISTRY=${IMAGE_REGISTRY:-ghcr.io/mcpgate}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/mcpgate/Chart.yaml)
[ -n "$VERSION" ] || { echo "no appVersion in charts/mcpgate/Chart.yaml" >&2; exit 1; }
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) \
    || { echo "set SOURCE_DATE_EPOCH: git cannot say the commit's time here" >&2; exit 1; }
fi
export SOURCE_DATE_EPOCH

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" >&2
command -v musl-gcc >/dev/null || { echo "musl-gcc is needed (Debian: musl-tools)" >&2; exit 1; }
# ring's C parts go through musl-gcc; the Rust side links statically by default on musl.
export CC_x86_64_unknown_linux_musl=musl-gcc
# No build-machine paths in the binaries: the same commit and toolchain give the same bytes
# wherever they are built.
CARGO_HOME_DIR=${CARGO_HOME:-$HOME/.cargo}
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=$PWD=/src --remap-path-prefix=$CARGO_HOME_DIR=/cargo"
cargo build --release --locked --target "$TARGET" -p mcpgate-operator -p mcpgate-proxy >&2

for component in operator proxy; do
  binary=target/$TARGET/release/mcpgate-$component
  # Chart and image agree on the name.
  grep -q "repository: $REGISTRY/mcpgate-$component\$" charts/mcpgate/values.yaml \
    || [ -n "${IMAGE_REGISTRY:-}" ] \
    || { echo "charts/mcpgate/values.yaml does not name $REGISTRY/mcpgate-$component" >&2; exit 1; }
  if readelf -l "$binary" | grep -q 'program interpreter'; then
    echo "$binary is dynamically linked: it would not start on a scratch image" >&2; exit 1
  fi
  "$binary" --version >&2
  image=$REGISTRY/mcpgate-$component:$VERSION
  if ! command -v buildah >/dev/null; then
    echo "buildah not installed: $binary checked, image $image not built" >&2
    continue
  fi
  context=$(mktemp -d)
  # Debug line tables stay in target/ (for symbolizing); the image keeps symbol names only.
  strip --strip-debug -o "$context/mcpgate-$component" "$binary"
  size=$(du -h "$context/mcpgate-$component" | cut -f1)
  cp /etc/ssl/certs/ca-certificates.crt "$context/ca.crt"
  touch -d "@$SOURCE_DATE_EPOCH" "$context"/*
  # vfs and chroot isolation: no overlay mounts or user namespaces needed, so this also runs
  # inside an unprivileged container.
  bud() {
    buildah --storage-driver vfs bud --quiet --isolation chroot --timestamp "$SOURCE_DATE_EPOCH" \
      --layers=false -f "images/$component.Containerfile" -t "$1" "$context" >/dev/null
    buildah --storage-driver vfs inspect --type image --format '{{.FromImageID}}' "$1"
  }
  id=$(bud "$image")
  # Reproducible: the same inputs again give the same image.
  again=$(bud "$image-rebuilt")
  buildah --storage-driver vfs rmi "$image-rebuilt" >/dev/null
  rm -rf "$context"
  [ "$id" = "$again" ] || { echo "$image is not reproducible: $id then $again" >&2; exit 1; }
  user=$(buildah --storage-driver vfs inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
  [ "$user" = "65532:65532" ] || { echo "$image runs as '$user', not 65532" >&2; exit 1; }
  echo "$image $id (a $size binary)"
done
