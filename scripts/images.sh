#!/usr/bin/env bash
# Builds every service image of docker/Dockerfile (the `FROM runtime AS ...`
# targets) as warmhouse/<target>:<version>, on any machine with a Docker
# engine, BuildKit or the legacy builder; prints each image's size, user and
# health check.
#
#   scripts/images.sh                      # every image, binaries built on this host
#   scripts/images.sh --offline            # never pull: the Debian base by debootstrap
#   scripts/images.sh --local-infra        # also the warmhouse-local/* images (docker/local/)
#   scripts/images.sh --only-local-infra   # only those
#   scripts/images.sh --binaries compile   # compile in the Dockerfile's builder stage (as CI does)
#   scripts/images.sh --push ghcr.io/OWNER/REPO --push-tag TAG
#
# Binaries (--binaries):
#   prebuilt (default)  `cargo build --release --locked` on this host, into the
#                       workspace's target/, then BINARIES=prebuilt: the
#                       Dockerfile copies them from a small build context
#                       (.tools/images/context/) instead of compiling. Needs
#                       a host whose C library is not newer than the base
#                       image's (Debian 12, glibc 2.36): checked.
#   compile             the whole build in rust:RUST_VERSION-DEBIAN_RELEASE
#                       (the Dockerfile's default; what GitHub Actions runs).
# Base image debian:DEBIAN_RELEASE-slim: used when the engine has it; else
# pulled, unless --offline or the pull fails; else made here with debootstrap
# (minbase, plus ca-certificates and curl, documentation stripped as in the
# slim image) and `docker import`ed under that name with a label saying so.
# A base that has ca-certificates and curl builds with `--network none`: no
# build step can reach anything.
#
# --local-infra also builds docker/local/Dockerfile's targets, the
# third-party programs of docker-compose.yml from Debian 12's packages plus
# tansu, for docker-compose.local.yml: each package with what it needs beyond
# the base is downloaded by the host's apt (Debian's mirror) and installed
# offline in the build.
#
# Debian packages this needs and lacks (debootstrap) are installed at pinned
# versions with apt. Environment: DOCKER_HOST (the engine), CARGO_NET_OFFLINE,
# DEBIAN_MIRROR (debootstrap's mirror; default the first of apt's sources).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

DEBOOTSTRAP_VERSION=1.0.128+nmu2+deb12u2
TANSU_VERSION=0.6.0
DOCKERFILE=docker/Dockerfile
LOCAL_DOCKERFILE=docker/local/Dockerfile
WORK=$ROOT/.tools/images

log() { printf '\033[1m[images]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[images] error:\033[0m %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }

binaries=prebuilt
offline=0
local_infra=0
push=""
push_tag=""
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binaries) binaries=${2:?}; shift 2 ;;
    --offline) offline=1; shift ;;
    --local-infra) local_infra=1; shift ;;
    --only-local-infra) local_infra=2; shift ;;
    --push) push=${2:?}; shift 2 ;;
    --push-tag) push_tag=${2:?}; shift 2 ;;
    --version) version=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown option $1" >&2; usage 64 >&2 ;;
  esac
done
case "$binaries" in prebuilt|compile) ;; *) die "--binaries is prebuilt or compile, not $binaries" ;; esac

command -v docker >/dev/null || die "no docker command: install Docker (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); scripts/container-smoke.sh starts one"

# What the Dockerfile says: its arguments, service targets, packages and binaries.
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$DOCKERFILE" | head -n 1; }
DEBIAN_RELEASE=$(dockerfile_arg DEBIAN_RELEASE)
RUST_VERSION=$(dockerfile_arg RUST_VERSION)
BASE_IMAGE="debian:${DEBIAN_RELEASE}-slim"
mapfile -t TARGETS < <(sed -n 's/^FROM runtime AS \([a-z-]*\).*/\1/p' "$DOCKERFILE")
mapfile -t PACKAGES < <(sed -n '/cargo build --release/,/from=target\/release/s/.*-p \([a-z-]*\).*/\1/p' "$DOCKERFILE")
# shellcheck disable=SC1003 # tr deletes the backslashes of continued lines
mapfile -t BINS < <(sed -n '/for bin in/,/; do/p' "$DOCKERFILE" | tr -d '\\' | sed -e 's/.*for bin in//' -e 's/; do.*//' | tr ' ' '\n' | sed '/^$/d')
[ ${#TARGETS[@]} -gt 0 ] && [ ${#PACKAGES[@]} -gt 0 ] && [ ${#BINS[@]} -gt 0 ] \
  || die "could not read the targets, packages and binaries of $DOCKERFILE"
if [ -z "$version" ]; then
  version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/warmhouse/Chart.yaml)
fi
[ -n "$version" ] || die "no version: pass --version"

# The legacy builder when there is no buildx (Debian's docker.io): the
# Dockerfile builds with both.
if docker buildx version >/dev/null 2>&1; then
  builder="BuildKit (buildx)"
else
  export DOCKER_BUILDKIT=0
  builder="legacy builder (no buildx)"
fi
log "engine $(docker version -f '{{.Server.Version}}'), $builder; images warmhouse/<target>:$version"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_pinned PACKAGE VERSION: installs exactly that version unless present.
apt_pinned() {
  local package=$1 wanted=$2 installed
  installed=$(dpkg-query -W -f='${Status} ${Version}' "$package" 2>/dev/null || true)
  if [ "$installed" = "install ok installed $wanted" ]; then
    return
  fi
  log "installing $package $wanted (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package=$wanted"
}

timed() {
  local started=$SECONDS
  "$@"
  log "  ($(( SECONDS - started )) s)"
}

# ---------------------------------------------------------------- base image

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1 || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

debootstrap_base() {
  [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null || die "debootstrap needs root"
  apt_pinned debootstrap "$DEBOOTSTRAP_VERSION"
  local mirror rootfs
  mirror=$(debian_mirror)
  mkdir -p "$WORK"
  rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
  log "making $BASE_IMAGE: debootstrap --variant=minbase $DEBIAN_RELEASE from $mirror"
  as_root debootstrap --variant=minbase --include=ca-certificates,curl "$DEBIAN_RELEASE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; as_root rm -rf "$rootfs"; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  # What the slim image leaves out (debuerreotype --slimify), now and for
  # every package installed later; apt keeps no package files or indexes.
  # shellcheck disable=SC2016 # the script expands its own $1
  as_root sh -eu -c '
    cd "$1"
    cat >etc/dpkg/dpkg.cfg.d/docker-slim <<EOF
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
    cat >etc/apt/apt.conf.d/docker-clean <<EOF
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
    find usr/share/doc -mindepth 1 -type d -empty -delete
    rm -rf usr/share/groff/* usr/share/info/* usr/share/linda/* usr/share/lintian/* usr/share/man/*
    find usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* var/log/*.log var/log/apt/* tmp/*
    : >etc/machine-id
  ' sh "$rootfs"
  as_root tar -C "$rootfs" --numeric-owner -c . \
    | docker import \
        --change 'CMD ["bash"]' \
        --change "LABEL org.opencontainers.image.description=\"Debian $DEBIAN_RELEASE minbase with ca-certificates and curl, made by scripts/images.sh with debootstrap from $mirror\"" \
        - "$BASE_IMAGE" >/dev/null
  as_root rm -rf "$rootfs"
}

ensure_base() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base $BASE_IMAGE present"
  elif [ "$offline" -eq 0 ] && docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base $BASE_IMAGE pulled"
  else
    [ "$offline" -eq 1 ] || log "cannot pull $BASE_IMAGE"
    timed debootstrap_base
  fi
}

# The base image's dpkg status file, to compare and to resolve packages against.
base_status() {
  local container
  container=$(docker create --network none "$BASE_IMAGE" true)
  docker cp "$container:/var/lib/dpkg/status" "$1" >/dev/null
  docker rm "$container" >/dev/null
}

# Package version in a dpkg status file.
status_version() { awk -v p="$2" '$1 == "Package:" {hit = ($2 == p)} hit && $1 == "Version:" {print $2; exit}' "$1"; }

# ---------------------------------------------------------------- binaries

# Builds the binaries on this host and puts them, with what the runtime stage
# copies, in a build context of their own: sets `context`.
prebuilt_context() {
  local status host_glibc base_glibc
  status=$(mktemp)
  base_status "$status"
  base_glibc=$(status_version "$status" libc6 | sed 's/-.*//')
  rm -f "$status"
  host_glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
  if [ -z "$base_glibc" ] || [ "$(printf '%s\n%s\n' "$host_glibc" "$base_glibc" | sort -V | tail -n 1)" != "$base_glibc" ]; then
    die "binaries built here (glibc $host_glibc) need a newer C library than $BASE_IMAGE has (glibc ${base_glibc:-unknown}): use --binaries compile"
  fi
  local package_args=()
  for package in "${PACKAGES[@]}"; do package_args+=(-p "$package"); done
  log "cargo build --release --locked --bins ${package_args[*]}"
  timed cargo build --release --locked --bins "${package_args[@]}" >&2
  context=$WORK/context
  rm -rf "$context"
  mkdir -p "$context/prebuilt" "$context/docker"
  cp docker/entrypoint.sh "$context/docker/"
  for bin in "${BINS[@]}"; do
    [ -x "target/release/$bin" ] || die "target/release/$bin was not built"
    ln "target/release/$bin" "$context/prebuilt/$bin" 2>/dev/null || cp "target/release/$bin" "$context/prebuilt/$bin"
  done
}

base_has_runtime_packages() {
  local status ok=0
  status=$(mktemp)
  base_status "$status"
  for package in ca-certificates curl; do
    awk -v p="$package" '$1 == "Package:" {hit = ($2 == p)} hit && /^Status: install ok installed/ {found = 1} END {exit !found}' "$status" || ok=1
  done
  rm -f "$status"
  return $ok
}

# ---------------------------------------------------------------- build

build_args=()
network_args=()
context=""
mkdir -p "$WORK"
ensure_base
if base_has_runtime_packages; then
  network_args=(--network none)
fi

[ "$local_infra" -eq 2 ] && TARGETS=()
case "$binaries" in
  prebuilt)
    [ ${#TARGETS[@]} -eq 0 ] || prebuilt_context
    build_args=(--build-arg BINARIES=prebuilt --build-arg "BUILDER_IMAGE=$BASE_IMAGE")
    ;;
  compile)
    context=$ROOT
    network_args=()   # cargo and apt fetch in the builder stage
    build_args=(--build-arg BINARIES=compile --build-arg "BUILDER_IMAGE=rust:$RUST_VERSION-$DEBIAN_RELEASE")
    log "compiling in rust:$RUST_VERSION-$DEBIAN_RELEASE (10-20 min the first time)"
    ;;
esac

built=()
for target in "${TARGETS[@]}"; do
  image="warmhouse/$target:$version"
  log "docker build --target $target -t $image"
  started=$SECONDS
  if ! docker build -f "$ROOT/$DOCKERFILE" --target "$target" -t "$image" \
      "${build_args[@]}" "${network_args[@]}" "$context" >"$WORK/build-$target.log" 2>&1; then
    tail -n 40 "$WORK/build-$target.log" >&2
    die "building $target failed (log: $WORK/build-$target.log)"
  fi
  log "  $image ($(( SECONDS - started )) s)"
  built+=("$image")
done

# ---------------------------------------------------------------- local infrastructure

# debs_for NAME PACKAGE...: the packages and what they need beyond the base,
# downloaded by apt into .tools/images/infra/debs/NAME.
debs_for() {
  local name=$1 status dir
  shift
  status=$WORK/infra/base-status
  dir=$WORK/infra/debs/$name
  rm -rf "$dir"
  mkdir -p "$dir/partial"
  if ! apt-get install --download-only --no-install-recommends -y -qq \
      -o "Dir::State::status=$status" -o "Dir::Cache::archives=$dir" -o Debug::NoLocking=1 \
      "$@" >"$WORK/infra/apt-$name.log" 2>&1; then
    cat "$WORK/infra/apt-$name.log" >&2
    die "apt could not download $* (is the package index current? apt-get update)"
  fi
  rm -rf "$dir/partial" "$dir/lock"
  log "  $name: $* and $(( $(find "$dir" -name '*.deb' | wc -l) - $# )) more packages"
}

if [ "$local_infra" -ge 1 ]; then
  command -v apt-get >/dev/null || die "--local-infra needs apt (Debian)"
  tansu --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION" \
    || die "tansu $TANSU_VERSION is not installed: scripts/install-deps.sh installs it"
  log "local infrastructure images (docker/local/): packages from Debian's mirror"
  rm -rf "$WORK/infra"
  mkdir -p "$WORK/infra/context/bin"
  base_status "$WORK/infra/base-status"
  debs_for influxdb influxdb
  debs_for postgres postgresql-15
  debs_for nginx nginx libnginx-mod-stream gettext-base
  debs_for prometheus prometheus
  mv "$WORK/infra/debs" "$WORK/infra/context/debs"
  cp "$(command -v tansu)" "$WORK/infra/context/bin/tansu"
  cp docker/local/*.sh docker/local/nginx.conf "$WORK/infra/context/"
  # shellcheck disable=SC2016 # a literal ${BASE_IMAGE}
  mapfile -t LOCAL_TARGETS < <(sed -n 's/^FROM \${BASE_IMAGE} AS \([a-z-]*\).*/\1/p' "$LOCAL_DOCKERFILE")
  for target in "${LOCAL_TARGETS[@]}"; do
    image="warmhouse-local/$target:$DEBIAN_RELEASE"
    log "docker build -f $LOCAL_DOCKERFILE --target $target -t $image"
    started=$SECONDS
    if ! docker build -f "$ROOT/$LOCAL_DOCKERFILE" --target "$target" -t "$image" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${network_args[@]}" "$WORK/infra/context" \
        >"$WORK/build-local-$target.log" 2>&1; then
      tail -n 40 "$WORK/build-local-$target.log" >&2
      die "building $target failed (log: $WORK/build-local-$target.log)"
    fi
    log "  $image ($(( SECONDS - started )) s)"
    built+=("$image")
  done
fi

# The build contexts hold hard links to target/release and copies of the
# packages: gone once the images have them (the disk is shared).
rm -rf "$WORK/context" "$WORK/infra"

# ---------------------------------------------------------------- report

log "images:"
printf '  %-40s %9s  %-12s %s\n' IMAGE SIZE USER HEALTHCHECK >&2
for image in "${built[@]}"; do
  size=$(docker image inspect -f '{{.Size}}' "$image")
  user=$(docker image inspect -f '{{.Config.User}}' "$image")
  health=$(docker image inspect -f '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{else}}none{{end}}' "$image")
  printf '  %-40s %6d MB  %-12s %s\n' "$image" $(( size / 1000000 )) "${user:-root}" "${health:0:70}" >&2
  case "$user" in
    ""|root|0|0:*) die "$image runs as root" ;;
  esac
  if [ "$health" = none ] && [ "$image" != "warmhouse/tools:$version" ]; then
    die "$image has no HEALTHCHECK"
  fi
done

if [ -n "$push" ]; then
  [ -n "$push_tag" ] || die "--push needs --push-tag (CI pushes the commit: --push-tag \$(git rev-parse HEAD))"
  for target in "${TARGETS[@]}"; do
    remote="$push/$target:$push_tag"
    docker tag "warmhouse/$target:$version" "$remote"
    log "docker push $remote"
    docker push "$remote" >"$WORK/push-$target.log" 2>&1 \
      || { cat "$WORK/push-$target.log" >&2; die "pushing $remote failed"; }
    log "  $(grep -o 'digest: sha256:[0-9a-f]*' "$WORK/push-$target.log" | head -n 1)"
  done
fi
