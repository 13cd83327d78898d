#!/usr/bin/env bash
# Installs station-agent on a Debian/Ubuntu/Raspberry Pi OS box: system packages, a virtual
# environment under /opt/station-agent with the package and the exact dependency versions of
# constraints.txt, `station-agent` on PATH (/usr/local/bin), the service user,
# /etc/station-agent, the systemd unit, enabled. Run it again at any time: it changes only what
# differs and says so. (A .deb does the same: scripts/build-deb, docs/technician-guide.md.)
#
#   sudo provisioning/install.sh                       # from this repository (needs PyPI)
#   sudo provisioning/install.sh --wheelhouse DIR      # offline: every wheel is in DIR
#   provisioning/install.sh --dry-run                  # print each action, change nothing
#   provisioning/install.sh --root /tmp/r              # into a temporary root (tests, images)
#
# Options:
#   --dry-run         print every action it would take ("would: ..."), one per line; change nothing
#   --root DIR        install under DIR instead of / (also: DESTDIR=DIR). apt-get, useradd, chown
#                     and systemctl are skipped (printed as "skip: ..."); the unit is enabled with
#                     the same symlink `systemctl enable` makes. The venv is usable for tests only
#                     (a venv is not relocatable).
#   --wheelhouse DIR  install station-agent and its dependencies from DIR only (pip --no-index);
#                     make one with `scripts/build-wheelhouse amd64|arm64 DIR`
#   --no-deps         install station-agent without its dependencies (tests only: it won't run)
#   --no-tools        skip the optional technician tools (ffmpeg, v4l-utils)
#   --python PATH     interpreter for the venv (default /usr/bin/python3, needs >= 3.11)
set -euo pipefail

SERVICE=station-agent
USER_NAME=station-agent
PREFIX=/opt/station-agent
CONF_DIR=/etc/station-agent
UNIT_DIR=/etc/systemd/system
COMMAND_LINK=/usr/local/bin/station-agent # on PATH (also sudo's secure_path on Debian)
REQUIRED_PACKAGES=(python3 python3-venv)
TOOL_PACKAGES=(ffmpeg v4l-utils) # ffprobe to judge segments, v4l2-ctl to list cameras

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONSTRAINTS="$SRC_DIR/constraints.txt" # the exact versions (scripts/lock)
DRY_RUN=0
ROOT="${DESTDIR:-}"
WHEELHOUSE=""
NO_DEPS=0
TOOLS=1
PYTHON=/usr/bin/python3
CHANGES=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }
die() {
  echo "install.sh: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE="$2"; shift ;;
    --no-deps) NO_DEPS=1 ;;
    --no-tools) TOOLS=0 ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON="$2"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage; die "unknown option: $1" ;;
  esac
  shift
done

if [ -n "$ROOT" ]; then
  ROOT="$(realpath -m "$ROOT")"
  [ "$ROOT" != / ] || ROOT=""
fi
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"
  WHEELHOUSE="$(cd "$WHEELHOUSE" && pwd)"
  compgen -G "$WHEELHOUSE/station_agent-*.whl" >/dev/null \
    || die "no station_agent-*.whl in $WHEELHOUSE (make one with: pip wheel -w DIR .)"
fi
[ -f "$CONSTRAINTS" ] || die "$CONSTRAINTS is missing (a copy of the repository without it?)"
if [ -z "$ROOT" ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo $0), or try --dry-run"
fi

VENV="$ROOT$PREFIX/venv"
WORK_DIR="$(mktemp -d -t station-agent-install.XXXXXX)"
trap 'rm -rf "$WORK_DIR"' EXIT
STAMP="$ROOT$PREFIX/installed-from.sha256"

# --- helpers: every change goes through act(), which prints it (or only prints it) -------------

act() { # act DESCRIPTION COMMAND...
  local what="$1"
  shift
  CHANGES=$((CHANGES + 1))
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "would: $what"
  else
    echo "do: $what"
    "$@"
  fi
}
skip() { echo "skip: $*"; }
ok() { echo "ok: $*"; }

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

# --- steps -------------------------------------------------------------------------------------

install_packages() {
  local wanted=("${REQUIRED_PACKAGES[@]}") missing=() pkg
  if [ "$TOOLS" -eq 1 ]; then wanted+=("${TOOL_PACKAGES[@]}"); fi
  if [ -n "$ROOT" ]; then
    skip "apt-get install ${wanted[*]} (--root: the host's packages are not the root's)"
    return
  fi
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    ok "system packages ${wanted[*]}"
    return
  fi
  act "apt-get install ${missing[*]}" apt_install "${missing[@]}"
}

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

check_python() {
  if [ ! -x "$PYTHON" ]; then
    if [ "$DRY_RUN" -eq 1 ]; then return; fi # apt-get would have installed it
    die "$PYTHON not found (use --python PATH)"
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than 3.11"
}

create_user() {
  if [ -n "$ROOT" ]; then
    skip "useradd --system $USER_NAME, groups video (--root)"
    return
  fi
  if ! getent passwd "$USER_NAME" >/dev/null; then
    act "useradd --system $USER_NAME (groups video, no login, home /var/lib/$SERVICE)" \
      useradd --system --user-group --groups video --home-dir "/var/lib/$SERVICE" \
      --no-create-home --shell /usr/sbin/nologin "$USER_NAME"
  elif ! id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx video; then
    act "usermod -a -G video $USER_NAME" usermod -a -G video "$USER_NAME"
  else
    ok "user $USER_NAME in group video"
  fi
}

ensure_dir() { # ensure_dir PATH MODE GROUP: owned by root:GROUP
  local path="$ROOT$1" mode="$2" group="$3"
  if [ ! -d "$path" ]; then
    if [ -n "$ROOT" ]; then
      act "mkdir $path (mode $mode)" install -d -m "$mode" "$path"
      skip "chown root:$group $path (--root)"
    else
      act "mkdir $path (mode $mode, root:$group)" install -d -m "$mode" -o root -g "$group" "$path"
    fi
    return
  fi
  if [ "$(stat -c %a "$path")" != "${mode#0}" ]; then
    act "chmod $mode $path" chmod "$mode" "$path"
  else
    ok "directory $path (mode $mode)"
  fi
  if [ -n "$ROOT" ]; then
    skip "chown root:$group $path (--root)"
  elif [ "$(stat -c %U:%G "$path")" != "root:$group" ]; then
    act "chown root:$group $path" chown "root:$group" "$path"
  fi
}

ensure_file() { # ensure_file SOURCE DEST MODE
  local src="$1" dest="$ROOT$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    ok "file $dest"
  else
    act "install $dest (mode $mode)" install -D -m "$mode" "$src" "$dest"
  fi
}

source_digest() { # what we install from, as one hash: changes whenever the package would
  if [ -n "$WHEELHOUSE" ]; then
    (cd "$WHEELHOUSE" && find . -maxdepth 1 -name '*.whl' -type f -print0 | sort -z \
      | xargs -0 sha256sum)
  else
    (cd "$SRC_DIR" && find pyproject.toml agent -type f ! -path '*/__pycache__/*' \
      ! -name '*.pyc' ! -name BUILD -print0 | sort -z | xargs -0 sha256sum)
    echo "build=$(build_id)"
  fi | { cat; sha256sum "$CONSTRAINTS"; echo "no-deps=$NO_DEPS"; } | sha256sum | cut -d' ' -f1
}

build_id() { # the commit of a git checkout (the status message's `build`), or nothing
  if command -v git >/dev/null && [ -x "$SRC_DIR/scripts/build-id" ]; then
    "$SRC_DIR/scripts/build-id"
  fi
}

pip_install() { # pip's own lines, indented under the step's "do:" line: progress, not silence
  PYTHONUNBUFFERED=1 "$VENV/bin/python" -m pip install "$@" 2>&1 | sed -u 's/^/    /'
}

install_venv() {
  local digest spec pip_args=(--disable-pip-version-check --progress-bar off -c "$CONSTRAINTS")
  if [ -n "$WHEELHOUSE" ]; then
    pip_args+=(--no-index --find-links "$WHEELHOUSE")
    spec="$SERVICE"
  else
    # pip builds in the source tree (build/, *.egg-info): build from a copy, so the repository
    # (or a read-only USB stick) stays untouched.
    spec="$WORK_DIR/src"
  fi
  if [ -x "$VENV/bin/python" ]; then
    ok "venv $VENV"
  else
    act "python3 -m venv $VENV ($PYTHON)" "$PYTHON" -m venv "$VENV"
  fi
  digest="$(source_digest)"
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$digest" ]; then
    ok "station-agent in $VENV is up to date (${digest:0:12})"
    return
  fi
  local from="${WHEELHOUSE:-$SRC_DIR}"
  if [ -n "$WHEELHOUSE" ]; then from="$WHEELHOUSE (offline)"; fi
  if [ -z "$WHEELHOUSE" ]; then
    act "copy the package source to $spec" copy_source "$spec"
  fi
  act "pip install station-agent into $VENV from $from" \
    pip_install "${pip_args[@]}" --force-reinstall --no-deps "$spec"
  if [ "$NO_DEPS" -eq 1 ]; then
    skip "pip install the dependencies (--no-deps)"
  else
    act "pip install the dependencies of station-agent (the versions in constraints.txt)" \
      pip_install "${pip_args[@]}" "$spec"
  fi
  act "record $STAMP" write_stamp "$digest"
}

copy_source() {
  mkdir -p "$1"
  cp -r "$SRC_DIR/pyproject.toml" "$SRC_DIR/README.md" "$SRC_DIR/agent" "$1/"
  find "$1" -name __pycache__ -type d -prune -exec rm -rf {} +
  rm -f "$1/agent/BUILD"
  local build
  build="$(build_id)"
  if [ -n "$build" ]; then printf '%s\n' "$build" >"$1/agent/BUILD"; fi
}

link_command() { # `station-agent` on PATH: the technician guide's first command
  local link="$ROOT$COMMAND_LINK" target="$PREFIX/venv/bin/$SERVICE"
  if [ "$(readlink "$link" 2>/dev/null)" = "$target" ]; then
    ok "command $link -> $target"
  else
    act "link $link -> $target (station-agent on PATH)" link_to "$target" "$link"
  fi
}

link_to() {
  install -d -m 0755 "$(dirname "$2")"
  ln -sfn "$1" "$2"
}

write_stamp() { printf '%s\n' "$1" >"$STAMP"; }

install_docs() { # every document: the guide links them (privacy-masks.md, verification.md...)
  local doc
  for doc in "$SRC_DIR"/docs/*.md; do
    [ -f "$doc" ] || continue
    ensure_file "$doc" "$PREFIX/docs/$(basename "$doc")" 0644
  done
}

enable_unit() {
  local unit="$UNIT_DIR/$SERVICE.service" wants="$UNIT_DIR/multi-user.target.wants"
  local unit_changed=0
  if [ -f "$ROOT$unit" ] && cmp -s "$SRC_DIR/systemd/$SERVICE.service" "$ROOT$unit"; then
    ok "unit $ROOT$unit"
  else
    unit_changed=1
    act "install $ROOT$unit (mode 0644)" \
      install -D -m 0644 "$SRC_DIR/systemd/$SERVICE.service" "$ROOT$unit"
  fi
  if systemd_running; then
    if [ "$unit_changed" -eq 1 ]; then
      act "systemctl daemon-reload" systemctl daemon-reload
    fi
    if systemctl is-enabled --quiet "$SERVICE" 2>/dev/null; then
      ok "$SERVICE enabled"
    else
      act "systemctl enable $SERVICE" systemctl enable --quiet "$SERVICE"
    fi
    return
  fi
  if [ -n "$ROOT" ]; then
    skip "systemctl daemon-reload (--root)"
  else
    skip "systemctl daemon-reload (systemd is not running on this machine)"
  fi
  # What `systemctl enable` does for WantedBy=multi-user.target: takes effect at next boot.
  if [ "$(readlink "$ROOT$wants/$SERVICE.service" 2>/dev/null)" = "$unit" ]; then
    ok "$SERVICE enabled (symlink in $ROOT$wants)"
  else
    act "enable $SERVICE: symlink $ROOT$wants/$SERVICE.service -> $unit" \
      enable_symlink "$ROOT$wants" "$unit"
  fi
}

enable_symlink() {
  install -d -m 0755 "$1"
  ln -sfn "$2" "$1/$SERVICE.service"
}

# --- main --------------------------------------------------------------------------------------

echo "station-agent install: root ${ROOT:-/}, source ${WHEELHOUSE:-$SRC_DIR}$(
  [ "$DRY_RUN" -eq 1 ] && echo ', dry run: nothing will change'
)"
install_packages
check_python
create_user
ensure_dir "$PREFIX" 0755 root
install_venv
link_command
install_docs
ensure_dir "$CONF_DIR" 0750 "$USER_NAME"
ensure_file "$SRC_DIR/provisioning/station.example.toml" "$CONF_DIR/config.example.toml" 0640
enable_unit

if [ "$CHANGES" -eq 0 ]; then
  echo "result: already installed, nothing changed"
elif [ "$DRY_RUN" -eq 1 ]; then
  echo "result: $CHANGES change(s) would be made (dry run)"
else
  echo "result: $CHANGES change(s) made"
  if [ ! -f "$ROOT$CONF_DIR/config.toml" ]; then
    echo "next: write $CONF_DIR/config.toml (station-agent provision), then" \
      "systemctl start $SERVICE"
  fi
fi
