#!/usr/bin/env bash
# The image, built from the Dockerfile and tested, with buildah: no daemon, no registry.
#
#   scripts/image.sh build   the Debian 12 base once (mmdebstrap; cached), then the
#                            Dockerfile unchanged; prints the image's size by layer
#   scripts/image.sh test    tests/image inside the built image: apply, diff,
#                            run --check-config, run against the lab API server,
#                            with CAP_NET_ADMIN alone and a read-only root
#   scripts/image.sh clean   removes the cache, the image storage with it
#
# Everything it keeps is under $NFTPROXY_IMAGE_CACHE (default
# /var/cache/nftproxy-image): buildah's storage and the base. As root on Debian 12;
# installs buildah and mmdebstrap when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${NFTPROXY_IMAGE_CACHE:-/var/cache/nftproxy-image}
IMAGE=${NFTPROXY_IMAGE:-localhost/nftproxy:test}
BASE=docker.io/library/debian:12-slim # the Dockerfile's ARG BASE
B=(buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver overlay)

say() { echo "image.sh: $*" >&2; }

tools() {
    command -v buildah >/dev/null && command -v mmdebstrap >/dev/null && return
    say "installing buildah and mmdebstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null
}

base() {
    "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1 && return
    say "making the Debian 12 base with mmdebstrap (once: cached in $CACHE)"
    local tmp ctr
    tmp=$(mktemp -d)
    # As debian:12-slim is made: merged /usr without the usrmerge package (which
    # pulls in perl), no documentation, manuals or translations.
    local slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/locale/*')
    mmdebstrap --quiet --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        "${slim[@]}" bookworm "$tmp/rootfs.tar"
    ctr=$("${B[@]}" from scratch)
    "${B[@]}" add "$ctr" "$tmp/rootfs.tar" / >/dev/null
    rm -rf "$tmp"
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    "${B[@]}" commit -q "$ctr" "$BASE" >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null
}

sizes() {
    # Each layer's size (buildah's storage records it) beside what made it.
    local history diffs
    history=$("${B[@]}" inspect --type image --format \
        '{{range .OCIv1.History}}{{if not .EmptyLayer}}{{.CreatedBy}}{{"\n"}}{{end}}{{end}}' "$IMAGE")
    diffs=$("${B[@]}" inspect --type image --format \
        '{{range .OCIv1.RootFS.DiffIDs}}{{.}}{{"\n"}}{{end}}' "$IMAGE")
    HISTORY=$history DIFFS=$diffs python3 - "$CACHE/storage/overlay-layers/layers.json" <<'PY' >&2
import json, os, sys
sizes = {l["diff-digest"]: l.get("diff-size", 0) for l in json.load(open(sys.argv[1]))}
made = [h.replace("/bin/sh -c ", "") for h in os.environ["HISTORY"].split("\n") if h]
diffs = [d for d in os.environ["DIFFS"].split("\n") if d]
total = 0
for diff, by in zip(diffs, made):
    total += sizes.get(diff, 0)
    print(f"  {sizes.get(diff, 0) / 1e6:6.0f} MB  {by[:90]}")
print(f"  {total / 1e6:6.0f} MB  in all")
PY
}

build() {
    tools
    base
    local start=$SECONDS
    # The registries may be reached through a proxy whose CA only the host trusts:
    # the host's bundle goes where update-ca-certificates takes it in, in the build.
    "${B[@]}" bud --quiet --pull=never --isolation chroot --network host --layers \
        --volume /etc/ssl/certs/ca-certificates.crt:/usr/local/share/ca-certificates/build-host.crt:ro \
        -t "$IMAGE" -f Dockerfile . >/dev/null
    # Older builds and the builder stage go; the final stage's layers stay, as the
    # next build's cache (apt's layer is rebuilt only when install.sh changes).
    "${B[@]}" rmi --prune >/dev/null 2>&1 || true
    say "built $IMAGE in $((SECONDS - start)) s"
    sizes
}

run_tests() {
    "${B[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1 || {
        say "no image $IMAGE: run scripts/image.sh build first"
        exit 1
    }
    # The image runs under buildah as a container runtime would run it.
    local ctr
    ctr=$("${B[@]}" from "$IMAGE")
    "${B[@]}" run --isolation chroot "$ctr" -- nftproxy run --version
    "${B[@]}" rm "$ctr" >/dev/null
    NFTPROXY_IMAGE=$IMAGE NFTPROXY_IMAGE_CACHE=$CACHE \
        .venv/bin/python -m pytest -q -p no:cacheprovider tests/image
}

case "${1:-}" in
build) build ;;
test) run_tests ;;
clean)
    "${B[@]}" rm --all >/dev/null 2>&1 || true
    "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$CACHE"
    ;;
*)
    echo "usage: scripts/image.sh build|test|clean" >&2
    exit 2
    ;;
esac
