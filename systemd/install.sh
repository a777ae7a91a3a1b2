#!/usr/bin/env bash
# Install, upgrade or remove dr-agent as a systemd service.
#
#   install.sh [--prefix ROOT] [--source DIR | --wheel FILE] [--no-systemctl]
#              install | upgrade | uninstall [--purge]
#
# install    venv in /opt/dr-agent/venv with dr-agent linked into
#            /usr/local/bin, the unit, sysusers and tmpfiles snippets, the
#            dr-agent user, /etc/dr-agent with an example config (never
#            overwritten); then daemon-reload and enable. Idempotent.
# upgrade    reinstall the package, refresh the unit; keep config and state;
#            restart the service if it is running.
# uninstall  remove the venv, unit and snippets; keep /etc/dr-agent and
#            /var/lib/dr-agent unless --purge. The dr-agent user is kept.
#
# --prefix ROOT   install under ROOT instead of / (tests, image staging);
#                 systemctl is never run there. The venv is not relocatable.
# --source DIR    checkout to install, unit files included (default: this
#                 script's repo).
# --wheel FILE    install this wheel instead of building from the checkout.
# --no-systemctl  do not daemon-reload/enable/restart/stop.
#
# Environment: PYTHON (default python3, >= 3.11) creates the venv.
# DR_AGENT_INSTALL_FAST=1 (tests and development only) links the checkout into
# a venv with system site-packages instead of running pip: no network, no
# build, well under a second.
set -euo pipefail

PROG=install.sh
UNIT=dr-agent.service

usage() {
    local code=${1:-2}
    if [ "$code" = 0 ]; then help_text; else help_text >&2; fi
    exit "$code"
}
help_text() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
die() { echo "$PROG: error: $*" >&2; exit 1; }
did() { echo "$PROG: $*"; }
skip() { echo "$PROG: skip: $*"; }

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=/
SOURCE=$(cd "$SCRIPT_DIR/.." && pwd)
WHEEL=
SYSTEMCTL=1
PURGE=0
CMD=

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; ROOT=$2; shift 2 ;;
        --prefix=*) ROOT=${1#*=}; shift ;;
        --source) [ $# -ge 2 ] || usage; SOURCE=$2; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --wheel) [ $# -ge 2 ] || usage; WHEEL=$2; shift 2 ;;
        --wheel=*) WHEEL=${1#*=}; shift ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        install|upgrade|uninstall) [ -z "$CMD" ] || usage; CMD=$1; shift ;;
        *) echo "$PROG: unknown argument: $1" >&2; usage ;;
    esac
done
[ -n "$CMD" ] || usage
[ "$PURGE" = 0 ] || [ "$CMD" = uninstall ] || die "--purge only applies to uninstall"

[ -n "$ROOT" ] || die "--prefix must not be empty"
[ -d "$ROOT" ] || die "--prefix $ROOT: no such directory"
ROOT=$(cd "$ROOT" && pwd -P)
# R prefixes every target path: empty for the live system.
if [ "$ROOT" = / ]; then R=; else R=$ROOT; fi
[ -n "$R" ] || [ "$(id -u)" = 0 ] || die "installing to / needs root (or use --prefix)"
# Only the live system has a service manager to talk to (not a container
# or chroot where systemd is not PID 1).
if [ -n "$R" ] || ! command -v systemctl >/dev/null || [ ! -d /run/systemd/system ]; then
    SYSTEMCTL=0
fi

SOURCE=$(cd "$SOURCE" 2>/dev/null && pwd) || die "--source: no such directory"
[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a dr-agent checkout (no pyproject.toml)"
if [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"
    WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
fi
PY=${PYTHON:-python3}
FAST=${DR_AGENT_INSTALL_FAST:-0}
[ "$FAST" != 1 ] || [ -z "$WHEEL" ] || die "DR_AGENT_INSTALL_FAST links a checkout; it cannot install --wheel"

# Unit and snippets ship with the checkout being installed.
UNITS=$SOURCE/systemd
[ -f "$UNITS/$UNIT" ] || die "$UNITS/$UNIT missing"
OPT=$R/opt/dr-agent
VENV=$OPT/venv
UNIT_DST=$R/etc/systemd/system/$UNIT
SYSUSERS_DST=$R/usr/lib/sysusers.d/dr-agent.conf
TMPFILES_DST=$R/usr/lib/tmpfiles.d/dr-agent.conf
ETC=$R/etc/dr-agent
STATE=$R/var/lib/dr-agent
CONFIG=$ETC/config.yaml
CREDENTIAL=$ETC/credentials/mqtt-password
# `dr-agent` on the PATH (sudo's secure_path too), as the docs write it.
LINK=$R/usr/local/bin/dr-agent
LINK_TARGET=/opt/dr-agent/venv/bin/dr-agent

# Path as seen on the target system, for messages.
show() { echo "${1#"$R"}"; }

# install_file SRC DST MODE: copy only when the content differs.
install_file() {
    local src=$1 dst=$2 mode=$3
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        skip "$(show "$dst") unchanged"
        return 1
    fi
    local verb=installed
    if [ -e "$dst" ]; then verb=updated; fi
    install -D -m "$mode" "$src" "$dst"
    did "$verb $(show "$dst")"
}

make_venv() {
    if "$VENV/bin/python" -c '' 2>/dev/null; then
        skip "venv $(show "$VENV") exists"
        return
    fi
    "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PY is missing or older than Python 3.11 (set PYTHON=...)"
    local args=() verb=created
    if [ "$FAST" = 1 ]; then args+=(--system-site-packages --without-pip); fi
    if [ -e "$VENV" ]; then
        # A distribution upgrade replaced the Python the venv was built on.
        args+=(--clear)
        verb=recreated
        rm -f "$VENV/bin/dr-agent"
    fi
    mkdir -p "$OPT"
    "$PY" -m venv "${args[@]}" "$VENV" \
        || die "'$PY -m venv' failed; on Debian: apt-get install python3-venv"
    did "$verb venv $(show "$VENV")"
}

# Writes a .pth file pointing at the checkout (what an editable install does)
# and one launcher per [project.scripts] entry.
link_checkout() {
    "$VENV/bin/python" - "$SOURCE" "$VENV" <<'EOF'
import sys, sysconfig, tomllib
from pathlib import Path

source, venv = Path(sys.argv[1]), Path(sys.argv[2])
Path(sysconfig.get_path("purelib"), "dr_agent_checkout.pth").write_text(f"{source}\n")
scripts = tomllib.loads((source / "pyproject.toml").read_text())["project"]["scripts"]
for name, target in scripts.items():
    module, func = target.split(":")
    launcher = venv / "bin" / name
    launcher.write_text(
        f"#!{venv}/bin/python\nimport sys\nfrom {module} import {func}\n"
        f"sys.exit({func}())\n"
    )
    launcher.chmod(0o755)
EOF
}

# install_package MODE: MODE is "new" (skip if present) or "upgrade".
install_package() {
    if [ "$1" = new ] && [ -x "$VENV/bin/dr-agent" ]; then
        skip "dr-agent already installed in the venv (use upgrade to reinstall)"
        return
    fi
    local what=${WHEEL:-$SOURCE}
    if [ "$FAST" = 1 ]; then
        link_checkout
        did "linked $SOURCE into the venv (DR_AGENT_INSTALL_FAST)"
        return
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q install)
    if [ -n "$WHEEL" ]; then
        # pip keeps an installed wheel of the same version; force the package.
        if [ "$1" = upgrade ]; then "${pip[@]}" --force-reinstall --no-deps "$WHEEL"; fi
        "${pip[@]}" "$WHEEL"
    else
        # Build from a copy: setuptools builds in-tree, and a root-owned build/
        # must not be left in someone's checkout. pip always reinstalls a
        # local directory, so upgrade needs no --force-reinstall.
        BUILD_DIR=$(mktemp -d)
        trap 'rm -rf "$BUILD_DIR"' EXIT
        tar -C "$SOURCE" --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude=tests --exclude=bench \
            -cf - . | tar -C "$BUILD_DIR" -xf -
        "${pip[@]}" "$BUILD_DIR"
    fi
    [ -x "$VENV/bin/dr-agent" ] || die "pip did not install the dr-agent command"
    did "installed dr-agent from $what into the venv"
}

link_command() {
    if [ "$(readlink "$LINK" 2>/dev/null)" = "$LINK_TARGET" ]; then
        skip "$(show "$LINK") links the venv's dr-agent"
        return
    fi
    # Replace a link (an older install, a developer's checkout), never a program.
    if [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
        skip "$(show "$LINK") is not a link: kept; the command is $LINK_TARGET"
        return
    fi
    mkdir -p "$(dirname "$LINK")"
    ln -sfn "$LINK_TARGET" "$LINK"
    did "linked $(show "$LINK") -> $LINK_TARGET"
}

install_units() {
    install_file "$UNITS/$UNIT" "$UNIT_DST" 0644 || true
    install_file "$UNITS/dr-agent.sysusers.conf" "$SYSUSERS_DST" 0644 || true
    install_file "$UNITS/dr-agent.tmpfiles.conf" "$TMPFILES_DST" 0644 || true
}

# The target's account database: NSS on the live system, files in a root.
user_exists() {
    if [ -z "$R" ]; then getent passwd dr-agent >/dev/null
    else grep -q '^dr-agent:' "$R/etc/passwd" 2>/dev/null; fi
}
group_exists() {
    if [ -z "$R" ]; then getent group dr-agent >/dev/null
    else grep -q '^dr-agent:' "$R/etc/group" 2>/dev/null; fi
}

create_user() {
    if user_exists; then
        skip "user dr-agent exists"
        return
    fi
    if command -v systemd-sysusers >/dev/null; then
        # sysusers locks $ROOT/etc/.pwd.lock, so etc must exist in a scratch root.
        mkdir -p "$R/etc"
        if [ -n "$R" ]; then
            systemd-sysusers --root "$ROOT" "$SYSUSERS_DST"
        else
            systemd-sysusers "$SYSUSERS_DST"
        fi
        did "created user dr-agent (systemd-sysusers)"
    elif [ -z "$R" ]; then
        useradd --system --user-group --home-dir /var/lib/dr-agent --no-create-home \
            --shell /usr/sbin/nologin --comment "Demand-response agent" dr-agent
        did "created user dr-agent (useradd)"
    else
        skip "user dr-agent: no systemd-sysusers to create it in $ROOT"
    fi
}

make_dirs() {
    if command -v systemd-tmpfiles >/dev/null && group_exists; then
        local args=(--create)
        if [ -n "$R" ]; then args+=(--root "$ROOT"); fi
        systemd-tmpfiles "${args[@]}" "$TMPFILES_DST"
        did "ensured $(show "$ETC") directories (systemd-tmpfiles)"
        return
    fi
    # No tmpfiles or no group: same layout by hand, group only when it resolves.
    install -d -m 0750 "$ETC" "$ETC/credentials" "$ETC/conf.d"
    if [ -z "$R" ] && group_exists; then
        chgrp dr-agent "$ETC" "$ETC/credentials" "$ETC/conf.d"
    fi
    did "ensured $(show "$ETC") directories"
}

example_config() {
    local f
    if [ -f "$SOURCE/config/site.example.yaml" ]; then
        echo "$SOURCE/config/site.example.yaml"
        return
    fi
    for f in "$SOURCE"/config/*.yaml; do
        if [ -f "$f" ]; then echo "$f"; return; fi
    done
}

install_config() {
    if [ -e "$CONFIG" ]; then
        skip "$(show "$CONFIG") exists (kept)"
    else
        local example
        example=$(example_config)
        if [ -n "$example" ]; then
            install -m 0640 "$example" "$CONFIG"
            [ -n "$R" ] || chgrp dr-agent "$CONFIG" 2>/dev/null || true
            did "installed $(show "$CONFIG") from ${example#"$SOURCE"/}: edit it for this site"
        else
            skip "no example config in $SOURCE/config; write $(show "$CONFIG") yourself"
        fi
    fi
    # LoadCredential= with a path fails the start when the file is missing;
    # an empty credential means no MQTT password.
    if [ -e "$CREDENTIAL" ]; then
        skip "$(show "$CREDENTIAL") exists (kept)"
    else
        (umask 077 && : >"$CREDENTIAL")
        did "created empty $(show "$CREDENTIAL") (no MQTT password)"
    fi
}

systemctl_reload_enable() {
    if [ "$SYSTEMCTL" = 0 ]; then
        skip "systemctl (scratch root, --no-systemctl or systemd not running)"
        return
    fi
    systemctl daemon-reload
    did "systemctl daemon-reload"
    if systemctl is-enabled --quiet "$UNIT"; then
        skip "$UNIT already enabled"
    else
        systemctl enable --quiet "$UNIT"
        did "enabled $UNIT; start it with: systemctl start dr-agent"
    fi
}

do_install() {
    make_venv
    install_package new
    link_command
    install_units
    create_user
    make_dirs
    install_config
    systemctl_reload_enable
}

do_upgrade() {
    make_venv
    install_package upgrade
    link_command
    install_units
    create_user
    make_dirs
    install_config
    if [ "$SYSTEMCTL" = 0 ]; then
        skip "systemctl (scratch root, --no-systemctl or systemd not running)"
        return
    fi
    systemctl daemon-reload
    did "systemctl daemon-reload"
    if systemctl is-active --quiet "$UNIT"; then
        systemctl restart "$UNIT"
        did "restarted $UNIT"
    else
        skip "$UNIT not running; not started"
    fi
}

remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf -- "$1"
        did "removed $(show "$1")"
    else
        skip "$(show "$1") absent"
    fi
}

do_uninstall() {
    if [ "$SYSTEMCTL" = 1 ] && [ -f "$UNIT_DST" ]; then
        # Stopping restores every device the agent changed.
        systemctl disable --now --quiet "$UNIT" || true
        did "stopped and disabled $UNIT"
    fi
    remove "$VENV"
    rmdir "$OPT" 2>/dev/null || true
    if [ "$(readlink "$LINK" 2>/dev/null)" = "$LINK_TARGET" ]; then remove "$LINK"; fi
    remove "$UNIT_DST"
    remove "$SYSUSERS_DST"
    remove "$TMPFILES_DST"
    if [ "$SYSTEMCTL" = 1 ]; then
        systemctl daemon-reload
        did "systemctl daemon-reload"
    fi
    if [ "$PURGE" = 1 ]; then
        remove "$ETC"
        remove "$STATE"
    else
        skip "kept $(show "$ETC") and $(show "$STATE") (--purge removes them)"
    fi
    skip "user dr-agent kept (userdel dr-agent removes it)"
}

case "$CMD" in
    install) do_install ;;
    upgrade) do_upgrade ;;
    uninstall) do_uninstall ;;
esac
