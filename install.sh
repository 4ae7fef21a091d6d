#!/bin/sh
# install.sh: install, verify and enable the LeadGen Wave 2 runtime hardening:
# the hardened motorcade-leadgen-api.service and the health watchdog timer.
#
#   sudo ./install.sh                 install or update; a re-run with nothing new changes nothing
#   sudo ./install.sh --dry-run       print every action, change nothing
#   sudo ./install.sh --restart-api   also restart the API so a changed unit takes effect
#   sudo ./install.sh --rollback [CHECKPOINT]   restore the latest (or named) checkpoint
#   sudo ./install.sh --uninstall     remove the watchdog; the API unit and env files stay
#   ./install.sh --root DIR ...       install into another root (packaging, tests)
#
# Exit codes: 0 done, 1 failed (nothing half-installed), 2 bad usage.
set -eu

API_UNIT=motorcade-leadgen-api.service
WD_SERVICE=motorcade-leadgen-watchdog.service
WD_TIMER=motorcade-leadgen-watchdog.timer
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/motorcade-leadgen
LIB_DIR=/usr/local/lib/motorcade-leadgen
LAUNCHER=/usr/local/sbin/leadgen-watchdog
DOC_DIR=/usr/local/share/doc/motorcade-leadgen
STATE_DIR=/run/motorcade-leadgen-watchdog
BACKUP_DIR=/var/backups/motorcade-leadgen
PYTHON=/usr/bin/python3
PODMAN=/usr/bin/podman

SRC=$(cd "$(dirname "$0")" && pwd)
ROOT=
DRY_RUN=0
RESTART_API=0
MODE=install
CHECKPOINT_NAME=
STAGE=
CHANGES=
API_READY=1
API_CHANGED=0
PODMAN_MISSING=0

info() { printf '%s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
fatal() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}
usage_error() {
    printf 'install.sh: %s (see ./install.sh --help)\n' "$*" >&2
    exit 2
}

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "$0"
}

# Run a command that changes the system, or only show it under --dry-run.
act() {
    if [ "$DRY_RUN" = 1 ]; then
        info "would run: $*"
    else
        info "+ $*"
        "$@"
    fi
}

# systemctl on the live system, or offline on --root.
sctl() {
    if [ -n "$ROOT" ]; then
        systemctl --root="$ROOT" "$@"
    else
        systemctl "$@"
    fi
}

# The same, shown first and skipped under --dry-run.
sctl_act() {
    if [ -n "$ROOT" ]; then
        act systemctl --root="$ROOT" "$@"
    else
        act systemctl "$@"
    fi
}

live() { [ -z "$ROOT" ]; }

# Enable (on) or disable (off) the timer; live, also start or stop it.
switch_timer() {
    verb=disable
    [ "$1" = off ] || verb=enable
    if live; then
        act systemctl "$verb" --now "$WD_TIMER"
    else
        sctl_act "$verb" "$WD_TIMER"
    fi
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --restart-api) RESTART_API=1 ;;
            --uninstall)
                [ "$MODE" = install ] || usage_error "--rollback and --uninstall exclude each other"
                MODE=uninstall
                ;;
            --rollback)
                [ "$MODE" = install ] || usage_error "--rollback and --uninstall exclude each other"
                MODE=rollback
                if [ $# -ge 2 ] && [ "${2#-}" = "$2" ]; then
                    CHECKPOINT_NAME=$2
                    shift
                fi
                ;;
            --root)
                [ $# -ge 2 ] || usage_error "--root needs a directory"
                ROOT=$2
                shift
                ;;
            --root=*) ROOT=${1#--root=} ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    if [ -n "$ROOT" ]; then
        [ -d "$ROOT" ] || usage_error "--root: no such directory: $ROOT"
        ROOT=$(cd "$ROOT" && pwd)
        [ "$ROOT" != / ] || ROOT=
    fi
    if [ "$RESTART_API" = 1 ] && { [ -n "$ROOT" ] || [ "$MODE" != install ]; }; then
        usage_error "--restart-api goes with a live install only"
    fi
}

preflight() {
    if live; then
        [ "$(id -u)" = 0 ] || fatal "must run as root: sudo $0"
        [ -d /run/systemd/system ] || fatal "systemd is not running here (no /run/systemd/system); use --root DIR to install into a tree"
    fi
    command -v systemctl >/dev/null 2>&1 || fatal "systemctl not found"
    [ "$MODE" != install ] && return 0
    command -v systemd-analyze >/dev/null 2>&1 || fatal "systemd-analyze not found: it verifies the units before they are enabled"
    [ -x "$PYTHON" ] || fatal "$PYTHON not found: the watchdog needs Python 3.9 or newer"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
        fatal "$PYTHON is $("$PYTHON" -V 2>&1): the watchdog needs Python 3.9 or newer"
    if live && [ ! -x "$PODMAN" ]; then
        PODMAN_MISSING=1
        API_READY=0
        warn "$PODMAN not found: the watchdog is installed, $API_UNIT is not"
    fi
}

# The installed entry point imports the byte-compiled module: a script run as
# the main program is compiled on every start, a third of a check's cost (bench/).
stage_files() {
    STAGE=$(mktemp -d)
    trap 'rm -rf "$STAGE"' EXIT
    cat >"$STAGE/leadgen-watchdog" <<EOF
#!$PYTHON -I
"""LeadGen health watchdog, installed by install.sh: see $DOC_DIR/README.md."""
import sys

sys.path.insert(0, "$LIB_DIR")
from leadgen_watchdog import main  # noqa: E402

sys.exit(main())
EOF
}

# The managed files: source, destination, mode.
managed_files() {
    cat <<EOF
$SRC/leadgen_watchdog.py $LIB_DIR/leadgen_watchdog.py 0755
$STAGE/leadgen-watchdog $LAUNCHER 0755
$SRC/units/$WD_SERVICE $UNIT_DIR/$WD_SERVICE 0644
$SRC/units/$WD_TIMER $UNIT_DIR/$WD_TIMER 0644
$SRC/units/$API_UNIT $UNIT_DIR/$API_UNIT 0644
$SRC/README.md $DOC_DIR/README.md 0644
$SRC/units/api.env $DOC_DIR/api.env.template 0644
$SRC/units/watchdog.env $DOC_DIR/watchdog.env.template 0644
$SRC/units/api.env $CONF_DIR/api.env 0640
$SRC/units/watchdog.env $CONF_DIR/watchdog.env 0640
EOF
}

env_value() { # FILE NAME: the last NAME=value in an env file, quotes removed
    sed -n "s/^[[:space:]]*$2=//p" "$1" | tail -n 1 | sed "s/^[\"']//; s/[\"']\$//"
}

# The API unit is only swapped in when it can start: image set and present, app env file there.
check_api_ready() {
    [ "$API_READY" = 1 ] || return 0
    live || return 0
    env_file=$CONF_DIR/api.env
    [ -f "$env_file" ] || env_file=$SRC/units/api.env
    image=$(env_value "$env_file" LEADGEN_IMAGE)
    app_env=$(env_value "$env_file" LEADGEN_APP_ENV_FILE)
    if [ -z "$image" ]; then
        API_READY=0
        warn "LEADGEN_IMAGE is empty in $CONF_DIR/api.env: $API_UNIT left as it is."
        warn "  Set LEADGEN_IMAGE to the image to run (it must pass: podman image exists IMAGE), then run $0 again."
    elif ! "$PODMAN" image exists "$image"; then
        API_READY=0
        warn "image $image (LEADGEN_IMAGE in $CONF_DIR/api.env) is not present locally: $API_UNIT left as it is."
        warn "  Load it (podman load / podman pull), then run $0 again."
    elif [ ! -r "$app_env" ]; then
        API_READY=0
        warn "application env file $app_env (LEADGEN_APP_ENV_FILE in $CONF_DIR/api.env) is missing: $API_UNIT left as it is."
        warn "  Create it (it may be empty), then run $0 again."
    fi
}

# Sets CHANGES to the lines "source destination mode" that would change anything.
plan_changes() {
    CHANGES=
    while read -r src dest mode; do
        target=$ROOT$dest
        case $dest in
            "$UNIT_DIR/$API_UNIT") [ "$API_READY" = 1 ] || continue ;;
        esac
        case $dest in
            "$CONF_DIR"/*)
                if [ -e "$target" ]; then
                    template=$ROOT$DOC_DIR/$(basename "$dest").template
                    if [ -e "$template" ] && ! cmp -s "$src" "$template"; then
                        info "kept $dest (yours); the shipped template changed: diff -u $template $src"
                    fi
                    continue
                fi
                ;;
        esac
        if [ -e "$target" ] && cmp -s "$src" "$target" && [ "$(stat -c %a "$target")" = "${mode#0}" ]; then
            continue
        fi
        CHANGES="$CHANGES$src $dest $mode
"
        [ "$dest" != "$UNIT_DIR/$API_UNIT" ] || API_CHANGED=1
    done <<EOF
$(managed_files)
EOF
}

timer_enabled() { sctl is-enabled --quiet "$WD_TIMER" 2>/dev/null; }

timer_ready() {
    timer_enabled || return 1
    live || return 0
    systemctl is-active --quiet "$WD_TIMER"
}

# Verify the units about to be installed, from the sources: a unit with a
# warning never reaches /etc/systemd/system.
verify_units() {
    units=
    for unit in "$WD_SERVICE" "$WD_TIMER" "$API_UNIT"; do
        [ "$unit" != "$API_UNIT" ] || [ "$API_READY" = 1 ] || continue
        units="$units $SRC/units/$unit"
    done
    info "verifying:$units"
    # shellcheck disable=SC2086 # the list is our own paths, without spaces
    out=$(systemd-analyze verify --man=no $units 2>&1) || fatal "systemd-analyze verify failed: $out"
    if ! live; then # the binaries belong to the target system, not to this host
        out=$(printf '%s\n' "$out" | grep -v 'is not executable: No such file or directory$' || true)
    fi
    [ -z "$out" ] || fatal "systemd-analyze verify printed warnings; nothing installed:
$out"
}

new_checkpoint() {
    base=$ROOT$BACKUP_DIR/$(date -u +%Y%m%dT%H%M%SZ)
    CHECKPOINT=$base
    n=2
    while [ -e "$CHECKPOINT" ]; do
        CHECKPOINT=$base-$n
        n=$((n + 1))
    done
}

# Copy the previous version of every file about to change into a timestamped
# folder, with a MANIFEST that --rollback reads back.
checkpoint() { # PATHS (one per line)
    new_checkpoint
    if [ "$DRY_RUN" = 1 ]; then
        info "would save a checkpoint in $CHECKPOINT"
        return 0
    fi
    mkdir -p "$CHECKPOINT/files"
    chmod 0700 "$CHECKPOINT"
    {
        if timer_enabled; then echo "timer enabled"; else echo "timer disabled"; fi
        printf '%s\n' "$1" | while read -r dest; do
            [ -n "$dest" ] || continue
            if [ -e "$ROOT$dest" ]; then
                mkdir -p "$CHECKPOINT/files$(dirname "$dest")"
                cp -p "$ROOT$dest" "$CHECKPOINT/files$dest"
                echo "replaced $dest"
            else
                echo "created $dest"
            fi
        done
    } >"$CHECKPOINT/MANIFEST"
    info "checkpoint: $CHECKPOINT"
}

# Copy SRC to TARGET with MODE through a temporary file and a rename, so a
# reader never sees half a file.
put_file() { # SRC TARGET MODE
    if [ "$DRY_RUN" = 1 ]; then
        info "would install -m $3 $1 $2"
        return 0
    fi
    info "+ install -m $3 $1 $2"
    mkdir -p "$(dirname "$2")"
    install -m "$3" "$1" "$2.new"
    mv -f "$2.new" "$2"
}

install_files() {
    printf '%s' "$CHANGES" | while read -r src dest mode; do
        put_file "$src" "$ROOT$dest" "$mode"
        if [ "$dest" = "$LIB_DIR/leadgen_watchdog.py" ]; then
            act "$PYTHON" -m py_compile "$ROOT$dest"
        fi
    done
}

units_changed() { printf '%s' "$CHANGES" | grep -q " $UNIT_DIR/"; }

reload_systemd() {
    live || return 0
    units_changed || return 0
    act systemctl daemon-reload
}

enable_units() {
    if [ "$API_READY" = 1 ] && ! sctl is-enabled --quiet "$API_UNIT" 2>/dev/null; then
        sctl_act enable "$API_UNIT"
    fi
    if ! timer_ready; then
        switch_timer on
    elif live && printf '%s' "$CHANGES" | grep -q " $UNIT_DIR/$WD_TIMER "; then
        act systemctl restart "$WD_TIMER"
    fi
}

apply_api() {
    live || return 0
    if [ "$API_READY" = 0 ]; then
        [ "$RESTART_API" = 0 ] || warn "--restart-api: $API_UNIT not restarted, see above"
        return 0
    fi
    if [ "$RESTART_API" = 1 ]; then
        act "$LAUNCHER" pause 10m
        if ! act systemctl restart "$API_UNIT"; then
            act "$LAUNCHER" resume
            fatal "systemctl restart $API_UNIT failed: see journalctl -u $API_UNIT -n 50"
        fi
        act "$LAUNCHER" resume
    elif [ "$API_CHANGED" = 1 ] && systemctl is-active --quiet "$API_UNIT"; then
        info "$API_UNIT changed; the running API still uses the old unit. Apply it with:"
        info "  sudo $0 --restart-api     (pauses the watchdog around the restart)"
    fi
}

run_check() {
    live || return 0
    if [ "$DRY_RUN" = 1 ]; then
        info "would run: $LAUNCHER check"
        return 0
    fi
    info "+ $LAUNCHER check"
    "$LAUNCHER" check || info "(the API is not healthy now; the watchdog counts from its next run)"
}

do_install() {
    check_api_ready
    plan_changes
    if [ -z "$CHANGES" ] && timer_ready; then
        info "nothing to change: every file is up to date and $WD_TIMER is enabled"
        run_check
        finish
        return 0
    fi
    [ -z "$CHANGES" ] || verify_units
    checkpoint "$(printf '%s' "$CHANGES" | cut -d' ' -f2)"
    install_files
    reload_systemd
    enable_units
    apply_api
    run_check
    finish
}

finish() {
    [ "$PODMAN_MISSING" = 0 ] || fatal "$PODMAN not found: $API_UNIT was not installed (the watchdog was)"
    if [ "$DRY_RUN" = 1 ]; then info "dry run: nothing was changed"; fi
}

latest_checkpoint() {
    dir=$ROOT$BACKUP_DIR
    [ -d "$dir" ] || return 0
    find "$dir" -mindepth 1 -maxdepth 1 -type d -exec basename {} \; | sort | tail -n 1
}

do_rollback() {
    name=${CHECKPOINT_NAME:-$(latest_checkpoint)}
    [ -n "$name" ] || fatal "no checkpoint under $ROOT$BACKUP_DIR: nothing to roll back"
    case $name in
        /*) CHECKPOINT=$name ;;
        *) CHECKPOINT=$ROOT$BACKUP_DIR/$name ;;
    esac
    [ -f "$CHECKPOINT/MANIFEST" ] || fatal "no checkpoint $name (no $CHECKPOINT/MANIFEST)"
    info "rolling back to $CHECKPOINT"
    restarts=
    while read -r what dest; do
        case $what in
            replaced) put_file "$CHECKPOINT/files$dest" "$ROOT$dest" "$(stat -c %a "$CHECKPOINT/files$dest")" ;;
            created)
                case $dest in
                    "$CONF_DIR"/*)
                        info "kept $dest: operator settings are never removed"
                        continue
                        ;;
                    "$UNIT_DIR/$WD_TIMER") switch_timer off ;;
                    "$UNIT_DIR/$API_UNIT") sctl_act disable "$API_UNIT" ;;
                esac
                act rm -f "$ROOT$dest"
                ;;
            timer) continue ;;
            *) fatal "unreadable line in $CHECKPOINT/MANIFEST: $what $dest" ;;
        esac
        case $dest in
            "$LIB_DIR/leadgen_watchdog.py") [ ! -e "$ROOT$dest" ] || act "$PYTHON" -m py_compile "$ROOT$dest" ;;
            "$UNIT_DIR/$API_UNIT") [ "$what" = created ] || restarts="$restarts $API_UNIT" ;;
            "$UNIT_DIR/$WD_TIMER") [ "$what" = created ] || restarts="$restarts $WD_TIMER" ;;
        esac
    done <"$CHECKPOINT/MANIFEST"
    if live; then act systemctl daemon-reload; fi
    if [ -e "$ROOT$UNIT_DIR/$WD_TIMER" ]; then
        if grep -qx "timer enabled" "$CHECKPOINT/MANIFEST"; then
            timer_ready || switch_timer on
        elif timer_enabled; then
            switch_timer off
            restarts=$(echo "$restarts" | sed "s/ $WD_TIMER//")
        fi
    fi
    if live; then
        for unit in $restarts; do
            act systemctl restart "$unit"
        done
    fi
    info "rolled back to $(basename "$CHECKPOINT")"
}

do_uninstall() {
    remove=
    for path in "$UNIT_DIR/$WD_TIMER" "$UNIT_DIR/$WD_SERVICE" "$LIB_DIR/leadgen_watchdog.py" "$LAUNCHER" \
        "$DOC_DIR/README.md" "$DOC_DIR/api.env.template" "$DOC_DIR/watchdog.env.template"; do
        [ ! -e "$ROOT$path" ] || remove="$remove$path
"
    done
    if [ -z "$remove" ] && [ ! -e "$ROOT$STATE_DIR" ]; then
        info "nothing to remove: the watchdog is not installed"
        return 0
    fi
    checkpoint "$remove"
    if [ -e "$ROOT$UNIT_DIR/$WD_TIMER" ]; then switch_timer off; fi
    if live; then act systemctl stop "$WD_SERVICE"; fi
    printf '%s' "$remove" | while read -r path; do
        act rm -f "$ROOT$path"
    done
    act rm -rf "$ROOT$LIB_DIR" "$ROOT$STATE_DIR"
    if live; then
        act systemctl daemon-reload
        act systemctl reset-failed "$WD_SERVICE" 2>/dev/null || true
    fi
    info "watchdog removed; $API_UNIT and $CONF_DIR/ are left in place (undo: $0 --rollback)"
    [ "$DRY_RUN" = 0 ] || info "dry run: nothing was changed"
}

parse_args "$@"
preflight
case $MODE in
    install)
        stage_files
        do_install
        ;;
    rollback) do_rollback ;;
    uninstall) do_uninstall ;;
esac
