#!/usr/bin/env bash
# Container test: build the submission image with buildah on a local stand-in base and run it
# the way the organisers do (podman, minus --gpus), then check every output file.
#
#   bash tests/container/container_test.sh            # CI (make container-test)
#   SQUASH=1 bash tests/container/container_test.sh   # also: squashed variant + gzipped archive
#
# No Docker engine and no registry are reachable here, so the base image is a stand-in for
# python:3.13-slim-bookworm: debootstrap bookworm (python 3.11) + the on-disk CPU torch wheel
# (see ../shared/docs/container-recipe.md, beside the repository). Runs as root, non-interactive.
#
# Environment:
#   SEGFM_CTR_DIR  store + scratch dir, kept between runs for caching (default /var/tmp/segfm-ctr)
#   SQUASH=1       also build a squashed image (buildah bud --squash), save it as
#                  docker-archive | gzip, and check that it loads back (about 2-3 min more)
#   REBUILD_BASE=1 rebuild the stand-in base images even if they exist
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CTR=${SEGFM_CTR_DIR:-/var/tmp/segfm-ctr}
IMAGE=localhost/segfm3d:test
PY="$REPO/.venv/bin/python"
RECIPE="$REPO/../shared/docs/container-recipe.md"  # the recipe this script follows; may be absent (CI)
TORCH_VERSION=2.13.0

log() { printf '[container-test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[container-test] FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

T_START=$(now)
[ -x "$PY" ] || die "no venv at $REPO/.venv (run make setup)"
[ "$(id -u)" = 0 ] || die "needs root (buildah/podman rootful store, debootstrap)"
if [ -f "$RECIPE" ]; then log "recipe: $(cd "$(dirname "$RECIPE")" && pwd)/$(basename "$RECIPE")"
else log "recipe $RECIPE absent: following the steps built into this script"; fi

# ---- 0. tools -------------------------------------------------------------------------------
missing=()
for t in buildah podman debootstrap runc; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq buildah podman debootstrap runc >/dev/null
fi

mkdir -p "$CTR"
# One run at a time per store.
exec 9>"$CTR/lock"
flock 9

# Overlay is 5-30x faster than vfs; use vfs only where overlay does not work (nested overlayfs).
# A store stays on one driver, so each driver gets its own store.
DRIVER=overlay
if ! podman --root "$CTR/overlay/root" --runroot "$CTR/overlay/run" --storage-driver overlay \
        info >/dev/null 2>&1; then
    DRIVER=vfs
fi
STORE=(--root "$CTR/$DRIVER/root" --runroot "$CTR/$DRIVER/run" --storage-driver "$DRIVER")
P() { podman "${STORE[@]}" "$@"; }
B() { buildah "${STORE[@]}" "$@"; }
printf '[containers]\ndefault_ulimits = []\n' >"$CTR/containers.conf"
export CONTAINERS_CONF="$CTR/containers.conf"
log "store $CTR/$DRIVER (driver $DRIVER)"

# ---- 1. stand-in for python:3.13-slim-bookworm (cached) -------------------------------------
if [ "${REBUILD_BASE:-0}" = 1 ]; then
    P rmi -f localhost/standin-torch localhost/standin-base >/dev/null 2>&1 || true
fi
if ! P image exists localhost/standin-base; then
    t0=$(now)
    R="$CTR/rootfs"
    rm -rf "$R"
    log "debootstrap bookworm minbase (about 1 min)"
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
        bookworm "$R" http://deb.debian.org/debian >"$CTR/debootstrap.log" 2>&1 \
        || { tail -20 "$CTR/debootstrap.log"; die "debootstrap failed"; }
    rm -f "$R"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 "$R/usr/local/bin/python"
    # The host bundle holds the proxy CA that pip needs during the build. Only the CA-bundle
    # setting goes into the pip config: the host's find-links / file:// indexes do not exist there.
    cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$R/etc/pip.conf"
    rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
    tar -C "$R" -c . | P import -q --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        - localhost/standin-base >/dev/null
    rm -rf "$R"
    log "standin-base built in $(elapsed "$t0" "$(now)") s"
fi
if ! P image exists localhost/standin-torch; then
    t0=$(now)
    ctx="$CTR/torchctx"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    # The CPU wheel lies on this machine's disk (find-links in the host pip config): no download.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        "torch==$TORCH_VERSION" -d "$ctx" 2>"$CTR/pip-download.log"
    ls "$ctx"/torch-*+cpu-*.whl >/dev/null 2>&1 || die "no CPU torch wheel found: $(ls "$ctx")"
    printf '%s\n' 'FROM localhost/standin-base' 'COPY torch-*.whl /tmp/' \
        'RUN pip install --no-cache-dir /tmp/torch-*.whl && rm /tmp/torch-*.whl' >"$ctx/Containerfile"
    log "building standin-torch (about 1 min)"
    B bud -q --isolation=chroot --network host -t localhost/standin-torch "$ctx" >/dev/null
    rm -rf "$ctx"
    log "standin-torch built in $(elapsed "$t0" "$(now)") s"
fi

# ---- 2. the app image -----------------------------------------------------------------------
for f in Dockerfile .dockerignore requirements.txt predict.sh app/__main__.py; do
    [ -e "$REPO/$f" ] || die "$f missing in $REPO"
done
log "building $IMAGE from $REPO/Dockerfile"
t0=$(now)
# --layers keeps the pip-install layer cached while requirements.txt is unchanged.
B bud -q --isolation=chroot --network host --layers \
    --build-arg BASE_IMAGE=localhost/standin-torch -t "$IMAGE" -f "$REPO/Dockerfile" "$REPO" >/dev/null
T_BUILD=$(elapsed "$t0" "$(now)")
# A rebuild leaves the previous image untagged; drop it (the cached layers stay: they are
# parents of the new image).
P image prune -f >/dev/null
SIZE_BYTES=$(P image inspect --format '{{.Size}}' "$IMAGE")
log "image built in $T_BUILD s, size $((SIZE_BYTES / 1000000)) MB"
P run --rm --network none "$IMAGE" /bin/bash -c 'test -f predict.sh && test "$(pwd)" = /workspace' \
    || die "image lacks /bin/bash, /workspace as WORKDIR or predict.sh"

# ---- 3. run cases the way the organisers do -------------------------------------------------
WORK="$CTR/work"
rm -rf "$WORK"
mkdir -p "$WORK"

# (c) no-box case: click iteration 1 as the evaluator writes it for a box-less case.
"$PY" - "$REPO/tests/data/labelled/MR_PyRadiomics_breast1.npz" "$WORK/nobox_src/MR_nobox_breast1.npz" <<'EOF'
import os, sys
import numpy as np
src, dst = sys.argv[1:3]
d = np.load(src, allow_pickle=True)
gts = d["gts"]
labels = [int(c) for c in np.unique(gts) if c != 0]
assert labels == list(range(1, len(labels) + 1)), labels
clicks = np.empty(len(labels), dtype=object)
for i, c in enumerate(labels):
    vox = np.argwhere(gts == c)
    clicks[i] = {"fg": [[int(v) for v in vox[len(vox) // 2]]], "bg": []}
os.makedirs(os.path.dirname(dst), exist_ok=True)
np.savez_compressed(dst, imgs=d["imgs"], spacing=d["spacing"], clicks=clicks,
                    clicks_order=np.array([["fg"]] * len(labels)),
                    prev_pred=np.zeros_like(d["imgs"], dtype=np.uint8))
EOF

CASES=()
AMOS="$REPO/../shared/samples/inputs/CT_AMOS_amos_0018.npz"
if [ -f "$AMOS" ]; then
    CASES+=("box|$AMOS")
else
    log "SKIP real sample: $AMOS absent; box case uses tests/data/inputs/MR_ICBM152_tissue.npz"
    CASES+=("box|$REPO/tests/data/inputs/MR_ICBM152_tissue.npz")
fi
CASES+=("click|$REPO/tests/data/inputs_iter/MR_ICBM152_tissue.npz")
CASES+=("nobox|$WORK/nobox_src/MR_nobox_breast1.npz")

check_output() {  # input output [seconds] -> prints K and labels; exits 1 on a contract violation
    "$PY" - "$1" "$2" "${3:-0}" <<'EOF'
import sys
import numpy as np
inp, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
d = np.load(inp, allow_pickle=True)
k = len(d["boxes"]) if "boxes" in d.files else len(d["clicks"])
o = np.load(out, allow_pickle=False)
errs = []
if "segs" not in o.files:
    errs.append(f"no key segs (keys {o.files})")
else:
    s = o["segs"]
    if s.dtype != np.uint8:
        errs.append(f"dtype {s.dtype} != uint8")
    if s.shape != d["imgs"].shape:
        errs.append(f"shape {s.shape} != imgs {d['imgs'].shape}")
    if s.size and (s.min() < 0 or s.max() > k):
        errs.append(f"labels {s.min()}..{s.max()} outside 0..{k}")
if errs:
    print("; ".join(errs))
    sys.exit(1)
present = sorted(int(v) for v in np.unique(s) if v)
note = f" WARNING: over the 15 s x K = {15 * k} s average per run" if seconds > 15 * k else ""
print(f"K={k} shape={s.shape} labels present {present}{note}")
EOF
}

declare -a SUMMARY=()
fail=0
for entry in "${CASES[@]}"; do
    kind=${entry%%|*}
    src=${entry#*|}
    name=$(basename "$src")
    d="$WORK/$kind"
    mkdir -p "$d/in" "$d/out" "$d/bare_out"
    cp "$src" "$d/in/$name"

    log "[$kind] $name: container run"
    t0=$(now)
    rc=0
    P --runtime runc run --rm --network none -m 32g \
        -v "$d/in":/workspace/inputs -v "$d/out":/workspace/outputs \
        "$IMAGE" /bin/bash -c "sh predict.sh" >"$d/container.log" 2>&1 || rc=$?
    t_ctr=$(elapsed "$t0" "$(now)")
    [ "$rc" = 0 ] || { tail -20 "$d/container.log"; log "[$kind] container exited $rc"; fail=1; }

    log "[$kind] $name: bare python -m app"
    t0=$(now)
    brc=0
    (cd "$REPO" && INPUT_DIR="$d/in" OUTPUT_DIR="$d/bare_out" "$PY" -m app) >"$d/bare.log" 2>&1 || brc=$?
    t_bare=$(elapsed "$t0" "$(now)")
    [ "$brc" = 0 ] || { tail -20 "$d/bare.log"; log "[$kind] bare python exited $brc"; }

    if [ -f "$d/out/$name" ]; then
        if res=$(check_output "$d/in/$name" "$d/out/$name" "$t_ctr"); then
            status="ok   $res"
        else
            status="FAIL $res"
            fail=1
        fi
    else
        status="FAIL no output file outputs/$name"
        fail=1
    fi
    SUMMARY+=("$(printf '%-6s %-28s container %6.1f s   bare python %6.1f s   %s' \
        "$kind" "$name" "$t_ctr" "$t_bare" "$status")")
    log "[$kind] $status"
done

# ---- 4. optional: squashed variant and the delivery archive ---------------------------------
if [ "${SQUASH:-0}" = 1 ]; then
    # docker-squash 1.2.2 cannot read podman's archive layout; buildah squashes the tested image
    # into one layer instead (same content, same config).
    log "squashing $IMAGE into one layer"
    t0=$(now)
    sq_ctr=$(B from -q --pull=never "$IMAGE")
    B commit -q --squash "$sq_ctr" localhost/segfm3d:squashed >/dev/null
    B rm "$sq_ctr" >/dev/null
    T_SQ=$(elapsed "$t0" "$(now)")
    P image prune -f >/dev/null
    SQ_BYTES=$(P image inspect --format '{{.Size}}' localhost/segfm3d:squashed)
    SQ_LAYERS=$(P image inspect --format '{{len .RootFS.Layers}}' localhost/segfm3d:squashed)
    t0=$(now)
    P save localhost/segfm3d:squashed | gzip -c >"$CTR/segfm3d-squashed.tar.gz"
    T_SAVE=$(elapsed "$t0" "$(now)")
    GZ_BYTES=$(stat -c %s "$CTR/segfm3d-squashed.tar.gz")
    t0=$(now)
    # podman 4.3 cannot load a .tar.gz by -i (invalid tar header); docker load can.
    gzip -dc "$CTR/segfm3d-squashed.tar.gz" | P load >/dev/null
    T_LOAD=$(elapsed "$t0" "$(now)")
    # The squashed image must still run: the click case again, output checked.
    sq="$WORK/squashed"
    mkdir -p "$sq/in" "$sq/out"
    cp "$REPO/tests/data/inputs_iter/MR_ICBM152_tissue.npz" "$sq/in/"
    P --runtime runc run --rm --network none -m 32g -v "$sq/in":/workspace/inputs \
        -v "$sq/out":/workspace/outputs localhost/segfm3d:squashed /bin/bash -c "sh predict.sh" \
        >"$sq/container.log" 2>&1 || die "squashed image: container run failed (see $sq/container.log)"
    check_output "$sq/in/MR_ICBM152_tissue.npz" "$sq/out/MR_ICBM152_tissue.npz" >/dev/null \
        || die "squashed image: output breaks the contract"
    SQUASH_LINE="squashed: build $T_SQ s, $SQ_LAYERS layer(s), $((SQ_BYTES / 1000000)) MB;"
    SQUASH_LINE+=" save|gzip $T_SAVE s -> $((GZ_BYTES / 1000000)) MB ($CTR/segfm3d-squashed.tar.gz);"
    SQUASH_LINE+=" gzip -dc|podman load $T_LOAD s; squashed image runs the click case: ok"
fi

# ---- 5. report ------------------------------------------------------------------------------
echo
echo "== container test summary (stand-in base, CPU torch; driver $DRIVER) =="
echo "image build $T_BUILD s; image size $((SIZE_BYTES / 1000000)) MB uncompressed ($IMAGE)"
[ -z "${SQUASH_LINE:-}" ] || echo "$SQUASH_LINE"
printf '%s\n' "${SUMMARY[@]}"
echo "total $(elapsed "$T_START" "$(now)") s; logs in $WORK/<case>/{container,bare}.log"
[ "$fail" = 0 ] || die "at least one container run broke the output contract"
echo "container test passed"
