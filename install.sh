#!/bin/sh
# install.sh: install, verify and enable the LeadGen Wave 2 runtime hardening:
# the hardened motorcade-leadgen-api.service and the health watchdog timer.
#
#   sudo ./install.sh                 install or update; a re-run with nothing new changes nothing
#   sudo ./install.sh --dry-run       print every action, change nothing
#   sudo ./install.sh --restart-api   also apply the installed API unit, on any run: pause the
#                                     watchdog, restart the API, wait for health, resume
#   sudo ./install.sh --rollback      undo the last run; once more steps one checkpoint further back
#   sudo ./install.sh --rollback NAME return to the state from just before run NAME
#   sudo ./install.sh --uninstall     remove the watchdog; the API unit and env files stay
#   ./install.sh --root DIR ...       install into another root (packaging, tests)
#   ./install.sh --list               print the managed files: source, destination, mode, role
#
# All or nothing: a run that changes anything first saves a checkpoint of every
# managed file and of both units' enablement. If a step fails, or the run is
# interrupted, it restores that checkpoint, says which step failed, exits 1.
# The env files in /etc/motorcade-leadgen are yours: installed only where
# absent, never overwritten, rolled back or removed.
# Exit codes: 0 done; 1 failed (nothing changed), or podman is missing (the
# watchdog is installed, the API unit is not); 2 bad usage.
set -eu
umask 022    # modes never depend on the caller's umask
unset CDPATH # a relative cd goes where it says

API_UNIT=motorcade-leadgen-api.service
WD_SERVICE=motorcade-leadgen-watchdog.service
WD_TIMER=motorcade-leadgen-watchdog.timer
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/motorcade-leadgen
LIB_DIR=/usr/local/lib/motorcade-leadgen
LAUNCHER=/usr/local/sbin/leadgen-watchdog
DOC_DIR=/usr/local/share/doc/motorcade-leadgen
STATE_DIR=/run/motorcade-leadgen-watchdog
WD_USER=motorcade-leadgen-watchdog
SYSUSERS_CONF=/etc/sysusers.d/$WD_USER.conf
POLKIT_RULE=/etc/polkit-1/rules.d/50-$WD_USER.rules
POLKITD=/usr/lib/polkit-1/polkitd
ROOT_MODE_DROPIN=$UNIT_DIR/$WD_SERVICE.d/50-root-mode.conf
BACKUP_DIR=/var/backups/motorcade-leadgen
PYTHON=/usr/bin/python3
PODMAN=/usr/bin/podman
HEALTH_WAIT=60 # seconds --restart-api and a first start wait for a healthy API

SRC=$(cd -P -- "$(dirname -- "$0")" && pwd -P)
SELF=$SRC/$(basename -- "$0")
ROOT=
DRY_RUN=0
RESTART_API=0
MODE=install
CHECKPOINT_NAME=
CACHE_TAG=
STAGE=
API_READY=1
PODMAN_MISSING=0
POLKIT=1       # 1: the watchdog runs as its own user (polkitd here); 0: sandboxed root
STEP=0
PHASE=         # checkpoint: saving it; changing: restore on failure; finished
FAILED_STEP=
CHECKPOINT=    # the checkpoint protecting this run
BACKUP_MADE=   # backup directories this run created (removed again with its checkpoint)
RESTORING=0
RESTORE_FAILED=0
NL='
'

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
    sed -n '/^[^#]/q; 2,$s/^# \{0,1\}//p' "$SELF"
}

# --- the one table --------------------------------------------------------

# Every managed file: source (in the checkout, or generated: in the staging
# directory), destination, mode, role. Every step reads this table.
managed_files() {
    cat <<EOF
leadgen_watchdog.py $LIB_DIR/leadgen_watchdog.py 0755 code
generated:bytecode $LIB_DIR/__pycache__/leadgen_watchdog.$CACHE_TAG.pyc 0644 code
generated:launcher $LAUNCHER 0755 code
units/$WD_SERVICE $UNIT_DIR/$WD_SERVICE 0644 unit
units/$WD_TIMER $UNIT_DIR/$WD_TIMER 0644 timer
units/$WD_USER.sysusers $SYSUSERS_CONF 0644 sysusers
units/50-$WD_USER.rules $POLKIT_RULE 0644 polkit
generated:root-mode $ROOT_MODE_DROPIN 0644 root-mode
units/$API_UNIT $UNIT_DIR/$API_UNIT 0644 api-unit
README.md $DOC_DIR/README.md 0644 doc
units/api.env $DOC_DIR/api.env.template 0644 doc
units/watchdog.env $DOC_DIR/watchdog.env.template 0644 doc
units/api.env $CONF_DIR/api.env 0640 config
units/watchdog.env $CONF_DIR/watchdog.env 0640 config
generated:subuid /etc/subuid 0644 subid
generated:subgid /etc/subgid 0644 subid
EOF
}

# Roles that belong on this host or not: the polkit rule with polkitd, the
# root-mode drop-in without it, the API's subordinate IDs with its unit.
wanted() { # ROLE
    case $1 in
        api-unit | subid) [ "$API_READY" = 1 ] ;;
        polkit) [ "$POLKIT" = 1 ] ;;
        root-mode) [ "$POLKIT" = 0 ] ;;
    esac
}

# The enablement links systemctl makes, one per unit: unit, its .wants directory.
enablement_links() {
    cat <<EOF
$WD_TIMER $UNIT_DIR/timers.target.wants
$API_UNIT $UNIT_DIR/multi-user.target.wants
EOF
}

parents() { # ABSOLUTE PATH: its parent directories up to (not including) /
    dir=${1%/*}
    while [ -n "$dir" ]; do
        printf '%s\n' "$dir"
        dir=${dir%/*}
    done
}

# Every directory a managed path lives in, with its parents, deepest first.
managed_dirs() {
    {
        while read -r _ dest _ _; do parents "$dest"; done <<EOF
$(managed_files)
EOF
        while read -r _ wants; do printf '%s\n%s\n' "$wants" "$(parents "$wants")"; done <<EOF
$(enablement_links)
EOF
    } | sort -u | awk -F/ '{ print NF, $0 }' | sort -k1,1nr -k2 | cut -d' ' -f2-
}

source_path() { # SOURCE as the table names it
    case $1 in
        generated:*) printf '%s\n' "$STAGE/${1#generated:}" ;;
        *) printf '%s\n' "$SRC/$1" ;;
    esac
}

# --- running things --------------------------------------------------------

# Run a command that changes the system, or only show it under --dry-run. A
# failure ends the run (the EXIT trap restores the checkpoint); while
# restoring, it is noted and the restore goes on.
act() {
    STEP=$((STEP + 1))
    if [ "$DRY_RUN" = 1 ]; then
        info "would run: $*"
        return 0
    fi
    info "+ $*"
    "$@" && return 0
    if [ "$RESTORING" = 1 ]; then
        RESTORE_FAILED=1
        warn "restore step failed: $*"
        return 0
    fi
    FAILED_STEP="step $STEP failed: $*"
    exit 1
}

# The same for steps after the change is complete: the caller handles failure.
try_act() {
    if [ "$DRY_RUN" = 1 ]; then
        info "would run: $*"
        return 0
    fi
    info "+ $*"
    "$@"
}

live() { [ -z "$ROOT" ]; }

# systemctl on the live system, or offline on --root.
sctl() {
    if live; then systemctl "$@"; else systemctl --root="$ROOT" "$@"; fi
}

sctl_act() {
    if live; then act systemctl "$@"; else act systemctl --root="$ROOT" "$@"; fi
}

unit_enabled() { sctl is-enabled --quiet "$1" 2>/dev/null; }

unit_active() { live && systemctl is-active --quiet "$1"; }

# --- arguments and host ----------------------------------------------------

parse_args() {
    root_given=0
    while [ $# -gt 0 ]; do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --restart-api) RESTART_API=1 ;;
            --list) MODE=list ;;
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
                root_given=1
                shift
                ;;
            --root=*)
                ROOT=${1#--root=}
                root_given=1
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    if [ "$root_given" = 1 ]; then
        [ -n "$ROOT" ] || usage_error "--root is empty (an unset variable?); give a directory, or / for the live system"
        case $ROOT in
            *"$NL"*) usage_error "--root contains a newline" ;;
            /*) ;;
            *) ROOT=./$ROOT ;;
        esac
        [ -d "$ROOT" ] || usage_error "--root: no such directory: $ROOT"
        ROOT=$(cd -P -- "$ROOT" && pwd -P)
        [ "$ROOT" != / ] || ROOT=
    fi
    if [ "$RESTART_API" = 1 ] && { [ -n "$ROOT" ] || [ "$MODE" != install ]; }; then
        usage_error "--restart-api goes with a live install only"
    fi
}

# Nothing is written outside --root: refuse a directory that resolves
# elsewhere (an absolute symlink inside the tree points at the host). A managed
# file that is itself a symlink is replaced or saved as a link, never written through.
confined() { # PATH
    live && return 0
    real=$(realpath -m -- "$ROOT$1") || fatal "--root: cannot resolve $ROOT$1"
    case $real in
        "$ROOT" | "$ROOT"/*) ;;
        *) fatal "--root: $ROOT$1 resolves to $real, outside $ROOT (a symlink in the tree?); nothing changed" ;;
    esac
}

# The bytecode's tag (cpython-311), or nothing when Python is older than 3.9.
cache_tag() {
    "$PYTHON" -I -S -c 'import sys; print(sys.implementation.cache_tag if sys.version_info >= (3, 9) else "")'
}

preflight() {
    if live; then
        [ "$(id -u)" = 0 ] || fatal "must run as root: sudo $SELF"
        [ -d /run/systemd/system ] || fatal "systemd is not running here (no /run/systemd/system); use --root DIR to install into a tree"
    fi
    command -v systemctl >/dev/null 2>&1 || fatal "systemctl not found"
    [ -x "$PYTHON" ] || fatal "$PYTHON not found: the watchdog needs Python 3.9 or newer"
    CACHE_TAG=$(cache_tag)
    [ -n "$CACHE_TAG" ] || fatal "$PYTHON is $("$PYTHON" -V 2>&1): the watchdog needs Python 3.9 or newer"
    while read -r _ dest _ _; do confined "${dest%/*}"; done <<EOF
$(managed_files)
EOF
    while read -r _ wants; do confined "$wants"; done <<EOF
$(enablement_links)
EOF
    confined "$BACKUP_DIR/x"
    confined "$STATE_DIR"
    [ "$MODE" = install ] || return 0
    command -v systemd-analyze >/dev/null 2>&1 || fatal "systemd-analyze not found: it verifies the units before they are enabled"
    [ -x "$ROOT$POLKITD" ] || POLKIT=0
    if live && [ "$POLKIT" = 1 ]; then
        command -v systemd-sysusers >/dev/null 2>&1 || fatal "systemd-sysusers not found: it creates the watchdog's user"
    fi
    if live && [ ! -x "$PODMAN" ]; then
        PODMAN_MISSING=1
        API_READY=0
        warn "$PODMAN not found: the watchdog is installed, $API_UNIT is not"
    fi
    # Debian 13: podman 5 publishes ports through netavark, which only recommends nftables.
    if live && [ -x "$PODMAN" ] && ! command -v nft >/dev/null 2>&1 &&
        [ "$("$PODMAN" info --format '{{.Host.NetworkBackend}}' 2>/dev/null)" = netavark ]; then
        warn "nft not found: podman's netavark needs it to publish 127.0.0.1:8000 (apt-get install nftables)"
    fi
}

# The installed entry point imports the byte-compiled module: a script run as
# the main program is compiled on every start, a third of a check's cost
# (bench/). The bytecode names the installed path (tracebacks point there) and
# is checked against the source's hash, not its mtime: the same source always
# gives the same bytes.
stage_files() {
    STAGE=$(mktemp -d)
    cat >"$STAGE/launcher" <<EOF
#!$PYTHON -I
"""LeadGen health watchdog, installed by install.sh: see $DOC_DIR/README.md."""
import sys

sys.path.insert(0, "$LIB_DIR")
from leadgen_watchdog import main  # noqa: E402

sys.exit(main())
EOF
    "$PYTHON" -I -S -c 'import py_compile, sys
py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True,
                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)' \
        "$SRC/leadgen_watchdog.py" "$STAGE/bytecode" "$LIB_DIR/leadgen_watchdog.py" ||
        fatal "cannot byte-compile $SRC/leadgen_watchdog.py"
    cat >"$STAGE/root-mode" <<EOF
# Installed by install.sh because $POLKITD is missing: without polkit a user
# other than root may not restart the API, so the watchdog runs as root, in
# its sandbox. Install polkitd and run install.sh again: it removes this file.
[Service]
User=
Group=
EOF
    # The API container's user namespace (--userns=auto) takes its host IDs from
    # the range of the user "containers"; an existing range is never changed.
    for name in subuid subgid; do
        if [ -f "$ROOT/etc/$name" ]; then cat -- "$ROOT/etc/$name" >"$STAGE/$name"; else : >"$STAGE/$name"; fi
        if [ -s "$STAGE/$name" ] && [ "$(tail -c 1 -- "$STAGE/$name")" != "" ]; then echo >>"$STAGE/$name"; fi
        echo "containers:2147483647:2147483648" >>"$STAGE/$name"
    done
}

has_subid_range() { grep -q '^containers:' -- "$1" 2>/dev/null; }

env_value() { # FILE NAME: the last NAME=value in an env file, quotes removed
    sed -n "s/^[[:space:]]*$2=//p" "$1" | tail -n 1 | sed "s/^[\"']//; s/[\"']\$//"
}

# The API unit is only swapped in when it can start: image set and present,
# application env file there. Every missing piece is named, in one run.
check_api_ready() {
    [ "$API_READY" = 1 ] || return 0
    live || return 0
    env_file=$CONF_DIR/api.env
    if [ ! -f "$env_file" ]; then
        env_file=$SRC/units/api.env
        if [ "$DRY_RUN" = 1 ]; then
            info "$CONF_DIR/api.env does not exist yet: this run would install it from the template, as read below"
        else
            info "$CONF_DIR/api.env does not exist yet: this run installs it from the template, as read below"
        fi
    fi
    image=$(env_value "$env_file" LEADGEN_IMAGE)
    app_env=$(env_value "$env_file" LEADGEN_APP_ENV_FILE)
    if [ -z "$image" ]; then
        API_READY=0
        warn "LEADGEN_IMAGE is empty in $CONF_DIR/api.env: $API_UNIT left as it is."
        warn "  Set LEADGEN_IMAGE to the image to run (it must pass: podman image exists IMAGE)."
    elif ! "$PODMAN" image exists "$image"; then
        API_READY=0
        warn "image $image (LEADGEN_IMAGE in $CONF_DIR/api.env) is not present locally: $API_UNIT left as it is."
        warn "  Load it (podman load / podman pull)."
    fi
    if [ ! -r "$app_env" ]; then
        API_READY=0
        warn "application env file $app_env (LEADGEN_APP_ENV_FILE in $CONF_DIR/api.env) is missing: $API_UNIT left as it is."
        warn "  Create it (it may be empty): install -m 0600 /dev/null $app_env"
    fi
    [ "$API_READY" = 1 ] || warn "  Then run $SELF again."
}

# --- the state on disk -------------------------------------------------------

# One line describing a path exactly: type, mode, owner, group, mtime, and its
# content hash or link target; empty when absent.
describe() { # PATH
    if [ -L "$1" ]; then
        printf 'link %s\n' "$(readlink -- "$1")"
    elif [ -e "$1" ]; then
        printf '%s %s\n' "$(stat -c '%F %a %u %g %Y' -- "$1")" "$(cksum <"$1")"
    fi
}

# Does the installed file differ in any way from its copy in a checkpoint?
file_differs() { # CHECKPOINT_DIR DEST
    [ "$(describe "$1/files$2")" != "$(describe "$ROOT$2")" ]
}

# Does the installed file already match SOURCE and MODE?
up_to_date() { # SOURCE TARGET MODE
    [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" && [ "$(stat -c %a -- "$2")" = "${3#0}" ] || return 1
    live || return 0
    [ "$(stat -c %u:%g -- "$2")" = 0:0 ]
}

# --- checkpoints ------------------------------------------------------------

valid_name() { # NAME: a plain name in the backup directory
    case $1 in
        "" | . | .. | *[!A-Za-z0-9._-]* | -* | .*) return 1 ;;
    esac
}

# The complete checkpoints, oldest first: a MANIFEST whose last line is
# `complete`. One cut short is never taken for a checkpoint.
checkpoints() {
    for dir in "$ROOT$BACKUP_DIR"/*/; do
        [ -d "$dir" ] || continue
        name=$(basename -- "$dir")
        valid_name "$name" || continue
        [ "$(tail -n 1 "$dir/MANIFEST" 2>/dev/null)" = complete ] || continue
        printf '%s\n' "$name"
    done | sort -V
}

finished() { [ -e "$ROOT$BACKUP_DIR/$1/FINISHED" ]; }

manifest_value() { # NAME KEY: the value of `KEY value` in its MANIFEST
    sed -n "s/^$2 //p" "$ROOT$BACKUP_DIR/$1/MANIFEST" | head -n 1
}

# Read a checkpoint's MANIFEST, trusting nothing: every line must be one the
# installer writes, naming a managed path. Anything else refuses, unchanged.
check_manifest() { # NAME
    dir=$ROOT$BACKUP_DIR/$1
    [ -f "$dir/MANIFEST" ] || fatal "no checkpoint $1 (no $dir/MANIFEST)"
    [ "$(tail -n 1 "$dir/MANIFEST")" = complete ] || fatal "checkpoint $1 is incomplete (its MANIFEST does not end with 'complete'); refusing it"
    dests=$(managed_files | cut -d' ' -f2)
    dirs=$(managed_dirs)
    lineno=0
    while IFS= read -r line; do
        lineno=$((lineno + 1))
        what=${line%% *}
        arg=${line#* }
        ok=0
        case $what in
            motorcade-leadgen-checkpoint) [ "$arg" != 1 ] || ok=1 ;;
            run) case $arg in install | rollback | uninstall) ok=1 ;; esac ;;
            restores | resumes) ! valid_name "$arg" || ok=1 ;;
            enablement)
                case $arg in
                    "$WD_TIMER enabled" | "$WD_TIMER disabled" | "$API_UNIT enabled" | "$API_UNIT disabled") ok=1 ;;
                esac
                ;;
            file)
                if printf '%s\n' "$dests" | grep -qxF -- "$arg"; then
                    [ -e "$dir/files$arg" ] || [ -L "$dir/files$arg" ] || fatal "checkpoint $1 names $arg, but $dir/files$arg is missing; refusing it"
                    ok=1
                fi
                ;;
            absent) ! printf '%s\n' "$dests" | grep -qxF -- "$arg" || ok=1 ;;
            dir-absent) ! printf '%s\n' "$dirs" | grep -qxF -- "$arg" || ok=1 ;;
            complete) ok=1 ;;
        esac
        [ "$ok" = 1 ] || fatal "checkpoint $1: MANIFEST line $lineno is not one install.sh writes, or names an unmanaged path: $line; refusing it, nothing changed"
    done <"$dir/MANIFEST"
}

new_checkpoint_name() {
    base=$(date -u +%Y%m%dT%H%M%SZ)
    name=$base
    n=2
    while [ -e "$ROOT$BACKUP_DIR/$name" ] || [ -L "$ROOT$BACKUP_DIR/$name" ]; do
        name=$base-$n
        n=$((n + 1))
    done
    printf '%s\n' "$name"
}

# Save every managed file (byte for byte, owner, mode, mtime, symlink-ness) and
# both units' enablement, then mark the checkpoint complete as its last step.
take_checkpoint() { # RUN [KEY VALUE]
    name=$(new_checkpoint_name)
    CHECKPOINT=$ROOT$BACKUP_DIR/$name
    if [ "$DRY_RUN" = 1 ]; then
        info "would save a checkpoint in $CHECKPOINT"
        return 0
    fi
    BACKUP_MADE=
    for dir in "$BACKUP_DIR" $(parents "$BACKUP_DIR"); do # deepest first
        [ -d "$ROOT$dir" ] || BACKUP_MADE="$BACKUP_MADE$ROOT$dir$NL"
    done
    PHASE=checkpoint
    act mkdir -p -m 0700 "$CHECKPOINT/files"
    present=
    {
        echo "motorcade-leadgen-checkpoint 1"
        echo "run $1"
        [ $# -lt 3 ] || echo "$2 $3"
        while read -r unit _; do
            if unit_enabled "$unit"; then echo "enablement $unit enabled"; else echo "enablement $unit disabled"; fi
        done <<EOF
$(enablement_links)
EOF
        while read -r _ dest _ _; do
            if [ -e "$ROOT$dest" ] || [ -L "$ROOT$dest" ]; then
                echo "file $dest"
                present="$present ${dest#/}"
            else
                echo "absent $dest"
            fi
        done <<EOF
$(managed_files)
EOF
        while read -r dir; do
            [ -d "$ROOT$dir" ] || echo "dir-absent $dir"
        done <<EOF
$(managed_dirs)
EOF
        echo complete
    } >"$CHECKPOINT/MANIFEST.part" || fatal "cannot write $CHECKPOINT/MANIFEST.part"
    if [ -n "$present" ]; then
        cd -P -- "$ROOT/"
        # shellcheck disable=SC2086 # our own paths from the table, without spaces
        act cp -a --parents -- $present "$CHECKPOINT/files/"
        cd /
    fi
    act mv -f "$CHECKPOINT/MANIFEST.part" "$CHECKPOINT/MANIFEST"
    PHASE=changing
    info "checkpoint: $CHECKPOINT"
}

# The run is complete: a later run must not take it for an interrupted one.
mark_finished() {
    [ "$DRY_RUN" = 0 ] || return 0
    act touch "$CHECKPOINT/FINISHED"
    PHASE=finished
}

# Put back the managed files and enablement a checkpoint recorded. KEEP_CONFIG:
# leave the operator's env files as they are (a --rollback), or not (the
# restore after a failed run, which may only remove what that run created).
restore_checkpoint() { # DIR KEEP_CONFIG
    cp_dir=$1
    changed_units=
    # Disable first, while the unit file is still there.
    while read -r unit _; do
        if unit_enabled "$unit" && ! grep -qx "enablement $unit enabled" "$cp_dir/MANIFEST"; then
            if [ "$unit" = "$WD_TIMER" ] && live; then
                act systemctl disable --now "$unit"
            else
                sctl_act disable "$unit"
            fi
        fi
    done <<EOF
$(enablement_links)
EOF
    while read -r _ dest _ role; do
        target=$ROOT$dest
        if [ -e "$target.new" ] || [ -L "$target.new" ]; then act rm -f "$target.new"; fi
        if [ "$2" = 1 ] && [ "$role" = config ]; then
            if [ -e "$target" ] && file_differs "$cp_dir" "$dest"; then
                info "kept $dest: operator settings are never rolled back"
            fi
            continue
        fi
        if grep -qxF "file $dest" "$cp_dir/MANIFEST"; then
            file_differs "$cp_dir" "$dest" || continue
            [ -d "${target%/*}" ] || act mkdir -p "${target%/*}"
            act cp -a "$cp_dir/files$dest" "$target.new"
            act mv -f "$target.new" "$target"
        elif [ -e "$target" ] || [ -L "$target" ]; then
            act rm -f "$target"
        else
            continue
        fi
        case $role in unit | timer | api-unit | root-mode) changed_units="$changed_units $(basename -- "$dest")" ;; esac
    done <<EOF
$(managed_files)
EOF
    while read -r dir; do
        grep -qxF "dir-absent $dir" "$cp_dir/MANIFEST" || continue
        if [ -d "$ROOT$dir" ] && [ -z "$(ls -A -- "$ROOT$dir")" ]; then act rmdir "$ROOT$dir"; fi
    done <<EOF
$(managed_dirs)
EOF
    while read -r unit _; do
        if [ -e "$ROOT$UNIT_DIR/$unit" ] && grep -qx "enablement $unit enabled" "$cp_dir/MANIFEST" && ! unit_enabled "$unit"; then
            sctl_act enable "$unit"
        fi
    done <<EOF
$(enablement_links)
EOF
    live || return 0
    [ -z "$changed_units" ] || act systemctl daemon-reload
    # The timer's active state follows its enablement.
    if [ -e "$UNIT_DIR/$WD_TIMER" ] && unit_enabled "$WD_TIMER"; then
        case " $changed_units " in
            *" $WD_TIMER "*) act systemctl restart "$WD_TIMER" ;;
            *) unit_active "$WD_TIMER" || act systemctl start "$WD_TIMER" ;;
        esac
    elif unit_active "$WD_TIMER"; then
        act systemctl stop "$WD_TIMER"
    fi
}

# Remove this run's own checkpoint (after a full restore) and the backup
# directories it created.
drop_checkpoint() {
    act rm -rf "$CHECKPOINT"
    while read -r dir; do
        if [ -n "$dir" ] && [ -d "$dir" ] && [ -z "$(ls -A -- "$dir")" ]; then act rmdir "$dir"; fi
    done <<EOF
$BACKUP_MADE
EOF
}

# EXIT (and INT, TERM): a failed or interrupted run restores its checkpoint.
on_exit() {
    status=$?
    trap - EXIT INT TERM
    [ "$status" = 0 ] || [ "$status" = 2 ] || status=1
    if [ "$status" = 1 ] && [ "$PHASE" = checkpoint ] && [ -n "$CHECKPOINT" ]; then
        printf 'ERROR: %s\n' "${FAILED_STEP:-interrupted} while saving the checkpoint; nothing was changed" >&2
        RESTORING=1
        drop_checkpoint >/dev/null
    elif [ "$status" = 1 ] && [ "$PHASE" = changing ]; then
        printf 'ERROR: %s; restoring checkpoint %s\n' "${FAILED_STEP:-interrupted}" "$(basename -- "$CHECKPOINT")" >&2
        RESTORING=1
        restore_checkpoint "$CHECKPOINT" 0 >&2
        if [ "$RESTORE_FAILED" = 0 ]; then
            drop_checkpoint >&2
            printf 'ERROR: restored: the managed files and enablement are as they were before this run\n' >&2
        else
            printf 'ERROR: the restore is incomplete; checkpoint kept: %s --rollback %s\n' "$SELF" "$(basename -- "$CHECKPOINT")" >&2
        fi
    fi
    [ -z "$STAGE" ] || rm -rf -- "$STAGE"
    exit "$status"
}

# --- install ----------------------------------------------------------------

# The newest checkpoint, when its run never finished (killed): it tells what
# the host looked like before that run.
interrupted_run() {
    name=$(checkpoints | tail -n 1)
    [ -n "$name" ] && ! finished "$name" && printf '%s\n' "$name"
    return 0
}

# What enablement to aim for: a unit installed for the first time is enabled;
# otherwise it stays as the operator left it (never re-enabled).
wanted_enablement() { # UNIT BEFORE(checkpoint name or empty)
    if [ -n "$2" ]; then
        grep -qxF "absent $UNIT_DIR/$1" "$ROOT$BACKUP_DIR/$2/MANIFEST" && return 0
        grep -qxF "enablement $1 enabled" "$ROOT$BACKUP_DIR/$2/MANIFEST"
    else
        [ -e "$ROOT$UNIT_DIR/$1" ] || [ -L "$ROOT$UNIT_DIR/$1" ] || return 0
        unit_enabled "$1"
    fi
}

# Sets CHANGES ("source destination mode role" lines), ENABLE (units to
# enable) and START_TIMER (live: an enabled timer that is not running).
plan_changes() {
    CHANGES=
    ENABLE=
    START_TIMER=0
    while read -r src dest mode role; do
        target=$ROOT$dest
        if ! wanted "$role"; then
            case $role in
                polkit | root-mode) if [ -e "$target" ] || [ -L "$target" ]; then CHANGES="$CHANGES- $dest $mode $role$NL"; fi ;;
            esac
            continue
        fi
        if [ "$role" = config ] && { [ -e "$target" ] || [ -L "$target" ]; }; then
            continue
        fi
        if [ "$role" = subid ] && has_subid_range "$target"; then continue; fi
        if ! up_to_date "$(source_path "$src")" "$target" "$mode" || [ -e "$target.new" ]; then
            CHANGES="$CHANGES$src $dest $mode $role$NL"
        fi
    done <<EOF
$(managed_files)
EOF
    for unit in "$WD_TIMER" "$API_UNIT"; do
        [ "$unit" != "$API_UNIT" ] || [ "$API_READY" = 1 ] || continue
        if wanted_enablement "$unit" "$BEFORE" && ! unit_enabled "$unit"; then
            ENABLE="$ENABLE $unit"
        elif ! wanted_enablement "$unit" "$BEFORE" && [ -z "$BEFORE" ]; then
            info "kept $unit disabled (yours); enable it with: systemctl enable --now $unit"
        fi
    done
    if live && unit_enabled "$WD_TIMER" && ! unit_active "$WD_TIMER"; then START_TIMER=1; fi
}

# The operator's env file stays; when the shipped template changed, say what is new.
report_templates() {
    for name in api.env watchdog.env; do
        mine=$ROOT$CONF_DIR/$name
        template=$ROOT$DOC_DIR/$name.template
        if [ ! -e "$mine" ] || [ ! -e "$template" ] || cmp -s "$SRC/units/$name" "$template"; then continue; fi
        info "kept $CONF_DIR/$name (yours); the shipped template changed. Compare: diff -u $mine $template"
        new=$(sed -n 's/^#\{0,1\}[[:space:]]*\([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$SRC/units/$name" | while read -r var; do
            grep -q "^#\{0,1\}[[:space:]]*$var=" "$mine" || printf ' %s' "$var"
        done)
        [ -z "$new" ] || info "  settings in the new template that $CONF_DIR/$name does not mention:$new"
    done
}

# Verify the units about to be installed, from the sources: a unit with a
# warning never reaches /etc/systemd/system.
verify_units() {
    set --
    while read -r src _ _ role; do
        case $role in unit | timer | api-unit) set -- "$@" "$(source_path "$src")" ;; esac
    done <<EOF
$CHANGES
EOF
    [ $# -gt 0 ] || return 0
    info "verifying: $*"
    out=$(systemd-analyze verify --man=no "$@" 2>&1) || fatal "systemd-analyze verify failed; nothing installed: $out"
    if ! live; then # the binaries belong to the target system, not to this host
        out=$(printf '%s\n' "$out" | grep -v 'is not executable: No such file or directory$' || true)
    fi
    [ -z "$out" ] || fatal "systemd-analyze verify printed warnings; nothing installed:
$out"
}

install_files() {
    while read -r src dest mode _; do
        [ -n "$dest" ] || continue
        target=$ROOT$dest
        if [ "$src" = - ]; then # no longer wanted here (the watchdog's mode changed)
            act rm -f "$target"
            continue
        fi
        [ -d "${target%/*}" ] || act mkdir -p "${target%/*}"
        act install -m "$mode" "$(source_path "$src")" "$target.new"
        act mv -f "$target.new" "$target"
    done <<EOF
$CHANGES
EOF
}

units_changed() { printf '%s' "$CHANGES" | grep -q " \(unit\|timer\|api-unit\|root-mode\)\$"; }

# The watchdog's user, before its unit can start (live; a --root tree gets it
# at boot from systemd-sysusers.service). Like a package's system user, it
# stays on rollback and uninstall.
create_user() {
    live || return 0
    getent passwd "$WD_USER" >/dev/null 2>&1 && return 0
    act systemd-sysusers "$SYSUSERS_CONF"
}

# Which identity the watchdog runs as, said once, on the run that sets it.
report_mode() {
    case $CHANGES in
        *" $ROOT_MODE_DROPIN 0644 root-mode$NL"*)
            if [ "$POLKIT" = 0 ]; then
                warn "polkitd not found ($POLKITD): the watchdog runs as root in its sandbox ($ROOT_MODE_DROPIN). Install polkitd and run install.sh again for its own user."
            else
                info "polkitd found: the watchdog now runs as $WD_USER ($ROOT_MODE_DROPIN removed)"
            fi
            ;;
    esac
}

enable_units() {
    live && units_changed && act systemctl daemon-reload
    for unit in $ENABLE; do
        if [ "$unit" = "$WD_TIMER" ] && live; then
            act systemctl enable --now "$unit"
        else
            sctl_act enable "$unit"
        fi
    done
    live || return 0
    case " $ENABLE " in *" $WD_TIMER "*) return 0 ;; esac
    if unit_enabled "$WD_TIMER"; then
        if printf '%s' "$CHANGES" | grep -q " $UNIT_DIR/$WD_TIMER "; then
            act systemctl restart "$WD_TIMER"
        elif ! unit_active "$WD_TIMER"; then
            act systemctl start "$WD_TIMER"
        fi
    fi
}

# Poll the health check quietly, then once more aloud.
wait_healthy() {
    n=0
    while [ "$n" -lt "$HEALTH_WAIT" ] && ! "$LAUNCHER" check >/dev/null 2>&1; do
        sleep 1
        n=$((n + 1))
    done
    info "+ $LAUNCHER check"
    "$LAUNCHER" check
}

# --restart-api: apply the installed unit, with the watchdog paused.
restart_api() {
    if [ "$API_READY" = 0 ]; then
        warn "--restart-api: $API_UNIT not restarted, see above"
        return 0
    fi
    [ "$DRY_RUN" = 0 ] || {
        info "would run: $LAUNCHER pause 10m; systemctl restart $API_UNIT; wait for health; $LAUNCHER resume"
        return 0
    }
    try_act "$LAUNCHER" pause 10m || fatal "$LAUNCHER pause failed: $API_UNIT not restarted"
    if ! try_act systemctl restart "$API_UNIT"; then
        try_act "$LAUNCHER" resume || true
        fatal "systemctl restart $API_UNIT failed: see journalctl -u $API_UNIT -n 50 (undo the files: $SELF --rollback)"
    fi
    healthy=1
    wait_healthy || healthy=0
    try_act "$LAUNCHER" resume || warn "$LAUNCHER resume failed: the pause expires by itself in 10m"
    [ "$healthy" = 1 ] || fatal "$API_UNIT restarted but not healthy after ${HEALTH_WAIT}s: see journalctl -u $API_UNIT -n 50"
}

# Was the running API started before its unit file was last installed?
api_predates_unit() {
    started=$(systemctl show -P ActiveEnterTimestamp --timestamp=unix "$API_UNIT" 2>/dev/null) || return 1
    started=${started#@}
    [ -n "$started" ] && [ "$(stat -c %Y -- "$UNIT_DIR/$API_UNIT")" -gt "$started" ]
}

# After the change: the API. Started when this run enabled it; else say how it stands.
apply_api() {
    live || return 0
    if [ "$RESTART_API" = 1 ]; then
        restart_api
        return 0
    fi
    [ "$API_READY" = 1 ] && [ -e "$UNIT_DIR/$API_UNIT" ] || return 0
    if unit_active "$API_UNIT"; then
        if printf '%s' "$CHANGES" | grep -q " $UNIT_DIR/$API_UNIT " || api_predates_unit; then
            info "$API_UNIT: the running API predates the installed unit and still runs the old one. Apply it with:"
            info "  sudo $SELF --restart-api     (pauses the watchdog around the restart)"
        fi
    elif case " $ENABLE " in *" $API_UNIT "*) true ;; *) false ;; esac then
        [ "$DRY_RUN" = 0 ] || {
            info "would run: systemctl start $API_UNIT"
            return 0
        }
        try_act systemctl start "$API_UNIT" ||
            fatal "systemctl start $API_UNIT failed: the API is down; see journalctl -u $API_UNIT -n 50"
        wait_healthy || fatal "$API_UNIT started but not healthy after ${HEALTH_WAIT}s: see journalctl -u $API_UNIT -n 50"
    elif unit_enabled "$API_UNIT"; then
        warn "the API is down: $API_UNIT is enabled but not running. Start it: sudo systemctl start $API_UNIT"
    fi
}

run_check() {
    live || return 0
    [ "$DRY_RUN" = 0 ] || {
        info "would run: $LAUNCHER check"
        return 0
    }
    [ "$RESTART_API" = 0 ] || return 0 # restart_api already checked
    info "+ $LAUNCHER check"
    "$LAUNCHER" check && return 0
    if unit_active "$API_UNIT"; then
        info "(the API is not healthy now; the watchdog counts failures from its next run and restarts it at the threshold)"
    else
        info "(the API is down: $API_UNIT is not running, and the watchdog leaves an inactive unit alone; start it: sudo systemctl start $API_UNIT)"
    fi
}

do_install() {
    stage_files
    BEFORE=$(interrupted_run)
    [ -z "$BEFORE" ] || info "the run that saved checkpoint $BEFORE did not finish; this run completes it"
    check_api_ready
    plan_changes
    report_templates
    if [ -z "$CHANGES" ] && [ -z "$ENABLE" ] && [ "$START_TIMER" = 0 ]; then
        if [ "$API_READY" = 0 ]; then
            # "nothing to change" is a contract (an Ansible playbook keys changed= on it); the rest says what is missing.
            info "nothing to change for the watchdog: its files are up to date and $WD_TIMER is as set; $API_UNIT is NOT installed until the above is fixed"
        elif [ "$RESTART_API" = 1 ]; then
            info "every file is up to date; applying the installed $API_UNIT (--restart-api)"
        else
            info "nothing to change: every file is up to date and $WD_TIMER is as set"
        fi
        if [ -n "$BEFORE" ] && [ "$DRY_RUN" = 0 ]; then
            CHECKPOINT=$ROOT$BACKUP_DIR/$BEFORE
            act touch "$CHECKPOINT/FINISHED"
        fi
        apply_api
        run_check
        finish
        return 0
    fi
    verify_units
    report_mode
    if [ -n "$BEFORE" ]; then take_checkpoint install resumes "$BEFORE"; else take_checkpoint install; fi
    install_files
    create_user
    enable_units
    mark_finished
    apply_api
    run_check
    finish
}

finish() {
    [ "$PODMAN_MISSING" = 0 ] || fatal "$PODMAN not found: $API_UNIT was not installed (the watchdog was)"
    if [ "$DRY_RUN" = 1 ]; then info "dry run: nothing was changed"; fi
}

# --- rollback -----------------------------------------------------------------

# A checkpoint that resumed an interrupted run stands for that run's own.
resolve() { # NAME
    name=$1
    while next=$(manifest_value "$name" resumes) && [ -n "$next" ]; do name=$next; done
    printf '%s\n' "$name"
}

previous() { # NAME: the complete checkpoint just before it
    checkpoints | sed -n "/^$1\$/q; p" | tail -n 1
}

# The checkpoint to go back to when the state is NAME's: skip over rollbacks.
step_back() { # NAME
    target=$(previous "$1")
    while [ -n "$target" ] && [ "$(manifest_value "$target" run)" = rollback ] && finished "$target"; do
        target=$(previous "$(manifest_value "$target" restores)")
    done
    [ -n "$target" ] || fatal "nothing older to roll back to: the state is already that from before $1, the oldest checkpoint (all: $(checkpoints | tr '\n' ' '))"
    resolve "$target"
}

rollback_target() {
    if [ -n "$CHECKPOINT_NAME" ]; then
        valid_name "$CHECKPOINT_NAME" || fatal "--rollback: not a checkpoint name: $CHECKPOINT_NAME (a plain name in $ROOT$BACKUP_DIR)"
        [ -d "$ROOT$BACKUP_DIR/$CHECKPOINT_NAME" ] || fatal "no checkpoint $CHECKPOINT_NAME in $ROOT$BACKUP_DIR"
        printf '%s\n' "$CHECKPOINT_NAME"
        return 0
    fi
    newest=$(checkpoints | tail -n 1)
    [ -n "$newest" ] || fatal "no checkpoint under $ROOT$BACKUP_DIR: nothing to roll back"
    if finished "$newest" && [ "$(manifest_value "$newest" run)" = rollback ]; then
        step_back "$(manifest_value "$newest" restores)"
    else
        resolve "$newest"
    fi
}

do_rollback() {
    target=$(rollback_target)
    check_manifest "$target"
    source_dir=$ROOT$BACKUP_DIR/$target
    info "rolling back to $source_dir: the state from just before that run"
    api_before=$(describe "$ROOT$UNIT_DIR/$API_UNIT")
    take_checkpoint rollback restores "$target"
    restore_checkpoint "$source_dir" 1
    mark_finished
    if live && [ "$api_before" != "$(describe "$UNIT_DIR/$API_UNIT")" ] && unit_active "$API_UNIT"; then
        [ ! -x "$LAUNCHER" ] || try_act "$LAUNCHER" pause 10m || true
        try_act systemctl restart "$API_UNIT" || warn "systemctl restart $API_UNIT failed: see journalctl -u $API_UNIT -n 50"
        [ ! -x "$LAUNCHER" ] || try_act "$LAUNCHER" resume || true
    fi
    info "rolled back to $target"
    [ "$DRY_RUN" = 0 ] || info "dry run: nothing was changed"
}

# --- uninstall ----------------------------------------------------------------

do_uninstall() {
    remove=
    while read -r _ dest _ role; do
        case $role in code | unit | timer | doc | sysusers | polkit | root-mode) ;; *) continue ;; esac
        if [ -e "$ROOT$dest" ] || [ -L "$ROOT$dest" ]; then remove="$remove $dest"; fi
    done <<EOF
$(managed_files)
EOF
    if [ -z "$remove" ] && [ ! -e "$ROOT$STATE_DIR" ] && ! unit_enabled "$WD_TIMER"; then
        info "nothing to remove: the watchdog is not installed"
        return 0
    fi
    take_checkpoint uninstall
    if unit_enabled "$WD_TIMER"; then
        if live; then act systemctl disable --now "$WD_TIMER"; else sctl_act disable "$WD_TIMER"; fi
    fi
    for unit in "$WD_TIMER" "$WD_SERVICE"; do
        if unit_active "$unit"; then act systemctl stop "$unit"; fi
    done
    for dest in $remove; do
        act rm -f "$ROOT$dest"
    done
    for dir in "$LIB_DIR/__pycache__" "$LIB_DIR" "$DOC_DIR" "${ROOT_MODE_DROPIN%/*}"; do
        if [ -d "$ROOT$dir" ] && [ -z "$(ls -A -- "$ROOT$dir")" ]; then act rmdir "$ROOT$dir"; fi
    done
    if live; then act systemctl daemon-reload; fi
    mark_finished
    # The failure counter is runtime state, not a managed file: removed once the rest is done.
    if [ -e "$ROOT$STATE_DIR" ]; then try_act rm -rf "$ROOT$STATE_DIR" || warn "could not remove $ROOT$STATE_DIR"; fi
    if live; then systemctl reset-failed "$WD_SERVICE" 2>/dev/null || true; fi
    info "watchdog removed; $API_UNIT and $CONF_DIR/ are left in place (undo: $SELF --rollback)"
    [ "$DRY_RUN" = 0 ] || info "dry run: nothing was changed"
}

parse_args "$@"
if [ "$MODE" = list ]; then
    CACHE_TAG=$(cache_tag)
    managed_files
    exit 0
fi
trap on_exit EXIT
trap 'FAILED_STEP="interrupted (SIGINT)"; exit 1' INT
trap 'FAILED_STEP="interrupted (SIGTERM)"; exit 1' TERM
preflight
case $MODE in
    install) do_install ;;
    rollback) do_rollback ;;
    uninstall) do_uninstall ;;
esac
