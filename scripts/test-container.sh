#!/usr/bin/env bash
# test-container.sh -- build docker/Dockerfile with podman and test the image for real
# (`make test-container`; .ci/run calls it).  Needs root (podman rootful, debootstrap).
#
#  1. Debian packages: podman with runc, debootstrap, podman-compose (scripts/deps.sh container).
#  2. containers.conf (given by CONTAINERS_CONF): runc, not crun (crun fails on these VMs with
#     "cgroups in hybrid mode not supported"); default ulimits at the hard limits these VMs
#     allow (podman's defaults ask for more and fail).
#  3. Base images, only when missing (no registry is reachable): debian:bookworm-slim is
#     `debootstrap --variant=minbase bookworm` from the mirror apt uses, trimmed as the official
#     slim image is (no docs, man pages or locales; apt keeps no caches), imported with
#     `podman import` and tagged as the registry's name too; nginx:1.22 (for the compose file)
#     is Debian bookworm's nginx 1.22 on that base.
#  4. `podman build --pull=never --format docker --network=host -f docker/Dockerfile`.
#  5. tests/container/test_image.py: the build context (.dockerignore), /health, a completion, a streamed completion, the
#     HEALTHCHECK, the non-root user, SIGTERM drain (podman stop -> exit 0), and
#     docker/compose.yaml's nginx over two replicas, run by podman-compose.
# Prints the image size and the time of each phase.  Environment: LMSERVE_IMAGE (the tag,
# default lmserve:test), CONTAINER_WORK (scratch folder, default build/container).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
phase_start=$t0
phase() { # name: print the time the previous phase took
  local now
  now=$(date +%s)
  echo "== test-container: $1 ($((now - phase_start)) s)"
  phase_start=$now
}

if [ "$(id -u)" -ne 0 ]; then
  echo "test-container: needs root (rootful podman and debootstrap); run it as root or in CI" >&2
  exit 1
fi
scripts/deps.sh install container
phase "packages present"

work=${CONTAINER_WORK:-build/container}
mkdir -p "$work"
work=$(cd "$work" && pwd)
export CONTAINERS_CONF="$work/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
image=${LMSERVE_IMAGE:-lmserve:test}

# The mirror apt uses: the first URI of a deb822 source, else the first "deb" line.
apt_mirror() {
  local m
  m=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
      grep -v security | head -n1 || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $2 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
                      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

if ! podman image exists docker.io/library/debian:bookworm-slim; then
  root="$work/rootfs"
  rm -rf "$root"
  mirror=$(apt_mirror)
  echo "test-container: debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; exit 1; }
  # As the official slim image: later installs skip docs, man pages and locales, apt keeps
  # no package caches; what debootstrap left of those goes too.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  cat >"$root/etc/apt/apt.conf.d/slim" <<'EOF'
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
         "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
         "$root"/var/log/*.log "$root"/var/log/apt/*
  tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  podman tag debian:bookworm-slim docker.io/library/debian:bookworm-slim
  rm -rf "$root"
  phase "base image debian:bookworm-slim made by debootstrap"
fi

# nginx:1.22 for docker/compose.yaml: Debian bookworm's nginx is 1.22.  Its main nginx.conf
# includes conf.d/*.conf, where compose mounts docker/nginx.conf, as the official image's does.
if ! podman image exists docker.io/library/nginx:1.22; then
  mkdir -p "$work/nginx"
  cat >"$work/nginx/Containerfile" <<'EOF'
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
EOF
  podman build --pull=never --network=host -t docker.io/library/nginx:1.22 "$work/nginx" >"$work/nginx-build.log" 2>&1 ||
    { tail -30 "$work/nginx-build.log"; exit 1; }
  phase "nginx:1.22 built from Debian's nginx"
fi

version=$(scripts/version.sh)
if ! podman build --pull=never --format docker --network=host --build-arg LMSERVE_VERSION="$version" \
       -f docker/Dockerfile -t "$image" . >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log"
  exit 1
fi
podman tag "$image" lmserve:latest  # the name docker/compose.yaml runs
podman image prune -f >/dev/null 2>&1 || true  # the build stage's previous image
size=$(podman image inspect "$image" --format '{{.Size}}')
phase "image $image built: $((size / 1000000)) MB ($size bytes), version $version"

rc=0
LMSERVE_IMAGE=$image LMSERVE_VERSION_EXPECTED=$version LMSERVE_IMAGE_SIZE=$size \
  python3 -m unittest -v tests/container/test_image.py 2>&1 | tee "$work/test.log" || rc=$?
phase "tests run"
echo "== test-container took $(( $(date +%s) - t0 )) s; image $((size / 1000000)) MB"
# The suite's closing line, as scripts/run-tests.sh writes it (.ci/run adds these up).
ran=$(sed -n 's/^Ran \([0-9]*\) tests\?.*/\1/p' "$work/test.log" | tail -1)
last=$(grep -aE '^(OK|FAILED)' "$work/test.log" | tail -1)
nf=$(sed -n 's/.*failures=\([0-9]*\).*/\1/p' <<<"$last"); ne=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$last")
f=$(( ${nf:-0} + ${ne:-0} )); [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
echo "tests: $(( ${ran:-0} - ${nf:-0} - ${ne:-0} )) passed, $f failed"
exit $rc
