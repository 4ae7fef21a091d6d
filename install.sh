#!/bin/sh
# install.sh: install, verify and enable the LeadGen Wave 2 runtime hardening:
# the hardened motorcade-leadgen-api.service and the health watchdog timer.
#
#   sudo ./install.sh                 install or update; a re-run with nothing new changes nothing
#   sudo ./install.sh --dry-run       print every action, change nothing (combines with every mode)
#   sudo ./install.sh --set NAME=VALUE  also set a LEADGEN_* key in api.env (repeatable; a release):
#                                     checkpointed, and a running API is restarted on it
#   sudo ./install.sh --restart-api   also apply the installed API unit, on any run: pause the
#                                     watchdog, restart the API, wait for health, resume
#   sudo ./install.sh --rollback      undo the last run; once more steps one checkpoint further back
#   sudo ./install.sh --rollback NAME return to the state from just before run NAME
#   sudo ./install.sh --uninstall     remove the watchdog; the API unit and env files stay
#   ./install.sh --root DIR ...       install into another root (packaging, tests)
#   ./install.sh --list               print the managed files: source, destination, mode, role
#   sudo ./install.sh --plan [--diff] [--set ...] [--restart-api]
#                                     print what that same install would do, change nothing, exit 0;
#                                     a line per change: `+ DEST MODE ROLE` install or replace,
#                                     `- DEST MODE ROLE` remove, `set NAME=VALUE` an api.env key,
#                                     `enable|start|restart UNIT`, `complete rollback CHECKPOINT` (a
#                                     killed --rollback the run finishes); no output: nothing would change.
#                                     --diff: then a unified diff per changed file (each from `--- `)
#
# One run at a time: a changing run holds a lock (LEADGEN_INSTALL_LOCK_WAIT,
# default 30 s, is how long a second run waits before it gives up).
# All or nothing: a run that changes anything first saves a checkpoint of every
# managed file, the api.env keys it sets and both units' enablement. If a step
# fails, or the run is stopped (HUP, INT, TERM, QUIT, PIPE), it restores that
# checkpoint (further signals wait until the restore ends), says which step
# failed, exits 1. The env files in /etc/motorcade-leadgen are yours: installed
# only where absent; only the keys given with --set are changed and rolled back.
# Exit codes: 0 done; 1 failed, the host is as before the run; 2 bad usage;
# 3 installed, but the API is not healthy (or its check cannot run) after the
# restart or start: undo with --rollback NAME, NAME as printed; 4 the restore
# after a failure is incomplete (its checkpoint is kept and named); 5 podman is
# missing: the watchdog is installed, the API unit is not.
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
HEALTH_WAIT=60 # seconds of wall time --restart-api and a first start wait for a healthy API
LIVE_LOCK=/run/lock/motorcade-leadgen-install.lock
LOCK_WAIT=${LEADGEN_INSTALL_LOCK_WAIT:-30}
TEXTFILE_DIR=/var/lib/prometheus/node-exporter # Debian's node_exporter reads *.prom here
METRICS_FILE=$STATE_DIR/leadgen.prom
METRICS_LINK=$TEXTFILE_DIR/motorcade-leadgen.prom
METRICS_DROPIN=$UNIT_DIR/$WD_SERVICE.d/60-metrics.conf
METRICS=${LEADGEN_METRICS:-on} # off: no metrics wiring (the playbook's leadgen_metrics: false)
METRICS_SAID=0

SRC=$(cd -P -- "$(dirname -- "$0")" && pwd -P)
SELF=$SRC/$(basename -- "$0")
ROOT=
DRY_RUN=0
RESTART_API=0
PLAN=0         # --plan: print the plan, change nothing
PLAN_DIFF=0    # --plan --diff: and each file's diff
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
RESUMES=       # the killed run's checkpoint this run takes over (take_over)
BUSY=          # --dry-run, --plan: the run holding the lock now (busy_lock)
BACKUP_MADE=   # backup directories this run created (removed again with its checkpoint)
RESTORING=0
RESTORE_FAILED=0
SETTINGS=      # NAME=VALUE lines from --set
SET_CHANGES=   # the ones that change api.env
API_TOUCHED=0  # this run paused the watchdog and (re)started the API
API_WAS_ACTIVE=0
DEFERRED=      # signals that arrived during the restore
NL='
'

# Output never fails a run: a closed terminal (SIGPIPE) is handled by the trap.
info() { printf '%s\n' "$*" 2>/dev/null || :; }
warn() { printf 'WARNING: %s\n' "$*" >&2 || :; }
fatal() {
    printf 'ERROR: %s\n' "$*" >&2 || :
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
units/motorcade-leadgen-notify $LIB_DIR/notify 0755 code
units/motorcade-leadgen-notify@.service $UNIT_DIR/motorcade-leadgen-notify@.service 0644 unit
units/$WD_USER.sysusers $SYSUSERS_CONF 0644 sysusers
units/50-$WD_USER.rules $POLKIT_RULE 0644 polkit
generated:root-mode $ROOT_MODE_DROPIN 0644 root-mode
units/$API_UNIT $UNIT_DIR/$API_UNIT 0644 api-unit
README.md $DOC_DIR/README.md 0644 doc
docs/operations.md $DOC_DIR/docs/operations.md 0644 doc
docs/runbook.md $DOC_DIR/docs/runbook.md 0644 doc
docs/alerting.md $DOC_DIR/docs/alerting.md 0644 doc
docs/configuration.md $DOC_DIR/docs/configuration.md 0644 doc
docs/ansible.md $DOC_DIR/docs/ansible.md 0644 doc
docs/design.md $DOC_DIR/docs/design.md 0644 doc
docs/testing.md $DOC_DIR/docs/testing.md 0644 doc
units/api.env $DOC_DIR/api.env.template 0644 doc
units/watchdog.env $DOC_DIR/watchdog.env.template 0644 doc
units/api.env $CONF_DIR/api.env 0640 config
units/watchdog.env $CONF_DIR/watchdog.env 0640 config
units/notify.env $DOC_DIR/notify.env.template 0644 doc
units/notify.env $CONF_DIR/notify.env 0640 config
generated:metrics $METRICS_DROPIN 0644 metrics
generated:metrics-link $METRICS_LINK 0777 metrics
generated:subuid /etc/subuid 0644 subid
generated:subgid /etc/subgid 0644 subid
EOF
    old_bytecode
}

# Bytecode an earlier interpreter left (Debian 12 -> 13: cpython-311 -> 313):
# managed by pattern, checkpointed, removed on update and uninstall.
old_bytecode() (
    for pyc in "$ROOT$LIB_DIR/__pycache__"/leadgen_watchdog.cpython-*.pyc; do
        dest=${pyc#"$ROOT"}
        if is_bytecode "$dest" && [ "$dest" != "$LIB_DIR/__pycache__/leadgen_watchdog.$CACHE_TAG.pyc" ]; then
            printf 'generated:none %s 0644 old-bytecode\n' "$dest"
        fi
    done
)

is_bytecode() { printf '%s\n' "$1" | grep -qx "$LIB_DIR/__pycache__/leadgen_watchdog\.cpython-[0-9]\{2,4\}\.pyc"; }

# Roles that belong on this host or not: the polkit rule with polkitd, the
# root-mode drop-in without it, the API's subordinate IDs with its unit.
wanted() { # ROLE
    case $1 in
        api-unit | subid) [ "$API_READY" = 1 ] ;;
        polkit) [ "$POLKIT" = 1 ] ;;
        old-bytecode) false ;;
        root-mode) [ "$POLKIT" = 0 ] ;;
        metrics) metrics_textfile wanted ;;
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

# Metrics where node_exporter reads textfiles (issue 21), as two rows of the
# table, role metrics: a drop-in that has the watchdog write its textfile in its
# own runtime directory, and a root-owned symlink in node_exporter's directory
# pointing at it. The watchdog's user gets no access to that directory.
# Unwanted (and removed) without the directory or with LEADGEN_METRICS=off,
# which is said once per run.
# The settings the installed command starts from (below watchdog.env, as the
# unit's Environment= is): a hand-typed pause then records its end in the same
# textfile the timer's runs write, so stopping the timer after it does not page.
launcher_site() {
    if [ "$METRICS" = on ] && [ -d "$ROOT$TEXTFILE_DIR" ]; then
        printf '"LEADGEN_WATCHDOG_METRICS_FILE": "%s"' "$METRICS_FILE"
    fi
}

metrics_textfile() { # stage | wanted
    case $1 in
        stage)
            case $METRICS in
                on | off) ;;
                *"$NL"*) usage_error "LEADGEN_METRICS must be on or off, got a value with a newline" ;;
                *) usage_error "LEADGEN_METRICS must be on or off, got '$METRICS'" ;;
            esac
            cat >"$STAGE/metrics" <<EOF
# Installed by install.sh: node_exporter's textfile directory exists on this
# host, and $METRICS_LINK
# points at the file set here. LEADGEN_WATCHDOG_METRICS_FILE in
# $CONF_DIR/watchdog.env overrides it; install.sh run with
# LEADGEN_METRICS=off removes this file and the link.
[Service]
Environment=LEADGEN_WATCHDOG_METRICS_FILE=$METRICS_FILE
# node_exporter (user prometheus) follows the link into this directory: it may
# pass through it, not list it. The state files in it stay 0600.
RuntimeDirectoryMode=0711
EOF
            ln -s "$METRICS_FILE" "$STAGE/metrics-link"
            ;;
        wanted)
            if [ "$METRICS" = on ] && [ -d "$ROOT$TEXTFILE_DIR" ]; then
                # mv would put the link inside a directory of that name, and report success.
                if [ -d "$ROOT$METRICS_LINK" ] && [ ! -L "$ROOT$METRICS_LINK" ]; then
                    fatal "$ROOT$METRICS_LINK is a directory, where the metrics link goes: move it away and run again; nothing changed"
                fi
                return 0
            fi
            # Said on the first install, and on the run that turns metrics off; not on every re-run.
            if [ "$METRICS_SAID" = 0 ] && { [ ! -e "$ROOT$UNIT_DIR/$WD_SERVICE" ] || [ -e "$ROOT$METRICS_DROPIN" ]; }; then
                if [ "$METRICS" = off ]; then
                    info "metrics: off (LEADGEN_METRICS=off); run install.sh without it to serve them through node_exporter"
                else
                    info "metrics: off, no node_exporter textfile directory ($TEXTFILE_DIR); to turn them on: apt-get install prometheus-node-exporter, then run install.sh again"
                fi
            fi
            METRICS_SAID=1
            return 1
            ;;
    esac
}

# --- running things --------------------------------------------------------

# The one path for everything that changes the system: run it, or under
# --dry-run only print it. Returns the command's status.
act() {
    if [ "$DRY_RUN" = 1 ]; then
        info "would run: $*"
        return 0
    fi
    info "+ $*"
    "$@"
}

# A step of the change: a failure ends the run (the EXIT trap restores the
# checkpoint); while restoring, it is noted and the restore goes on.
step() {
    STEP=$((STEP + 1))
    act "$@" && return 0
    if [ "$RESTORING" = 1 ]; then
        RESTORE_FAILED=1
        warn "restore step failed: $*"
        return 0
    fi
    FAILED_STEP="step $STEP failed: $*"
    exit 1
}

live() { [ -z "$ROOT" ]; }

# systemctl on the live system, or offline on --root.
sctl() {
    if live; then systemctl "$@"; else systemctl --root="$ROOT" "$@"; fi
}

sctl_step() {
    if live; then step systemctl "$@"; else step systemctl --root="$ROOT" "$@"; fi
}

unit_enabled() { sctl is-enabled --quiet "$1" 2>/dev/null; }

unit_active() { live && systemctl is-active --quiet "$1"; }

# --- the file edits sh cannot do safely ---------------------------------------

# One small Python program (the interpreter the watchdog needs anyway) for the
# edits that need a descriptor, a lock or exact bytes:
#   env-check NAME            stdin against the env-file grammar (systemd and the watchdog read it alike)
#   env-set FILE NAME[=VALUE] set (or remove) one key's line, every other line kept
#   subid-add FILE LOCK RECORD   our `containers` line, only when absent, in a free range;
#                             RECORD notes `FILE LINE` first (written ahead: a kill never hides our line)
#   subid-remove FILE LOCK LINE RECORD [drop-empty]   only that exact line (exit 3: none, kept); RECORD
#                             forgets it, and every checkpoint forgets a record of FILE whose line FILE lacks
# A shared file is read and replaced under LOCK, the lock shadow's own tools
# take (lckpwdf: an fcntl lock on /etc/.pwd.lock), and written beside itself,
# then renamed: owner and mode kept.
HELPER_PY='
import fcntl, os, re, sys, time

def fail(msg):
    sys.stderr.write(msg + "\n")
    sys.exit(1)

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SPECIAL = set("\"\x27\\$`")

def env_line_error(line):
    # In the order of leadgen_watchdog.parse_env_file, so both refuse the same lines.
    if "\r" in line:
        return "a carriage return (CRLF line ends?)"
    if not line.isprintable():
        return "a control or invisible character (tab, NUL, no-break space, ...)"
    if line.endswith("\\"):
        return "a trailing backslash (systemd joins the next line to it)"
    if line == "" or line[0] in "#;":
        return None
    name, eq, value = line.partition("=")
    if not eq or not NAME.match(name):
        return "not NAME=VALUE (no spaces around =, no export)"
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"\x27":
        if any(c in SPECIAL for c in value[1:-1]):
            return "a quote, backslash, $ or ` inside the quotes"
        return None
    if any(c in SPECIAL for c in value):
        return "a quote, backslash, $ or ` (unbalanced quotes?)"
    if value != value.strip():
        return "space at the start or end of the value"
    return None

def env_check(label, data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        fail(f"{label} line {line}: not UTF-8; systemd and the watchdog would read it differently")
    for number, line in enumerate(text.split("\n")[: -1 if text.endswith("\n") else None], 1):
        why = env_line_error(line)
        if why:
            fail(f"{label} line {number}: {why}; systemd and the watchdog would read it differently")

def lock(path):
    if not path:
        return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    end = time.monotonic() + 15  # as long as lckpwdf waits
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > end:
                fail(f"{path} is held by another tool (useradd, usermod?) for more than 15s")
            time.sleep(0.2)

def read(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return b"", None
    except OSError as err:
        fail(f"{path}: {err.strerror} (a symlink?); nothing changed")
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not (st.st_mode & 0o170000 == 0o100000):
            fail(f"{path} is not a regular file; nothing changed")
        return f.read(), st

def write(path, data, st, mode=0o644):
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, st.st_mode & 0o7777 if st else mode)
        if st:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

def free_range(lines):
    taken = []
    for line in lines:
        parts = line.split(":")
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            taken.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    want, size = 2147483647, 2147483648
    if all(end <= want or start >= want + size for start, end in taken):
        return want, size
    best, edge = (0, 0), 100000  # useradd hands out ranges from 100000 up
    for start, end in sorted(taken) + [(4294967295, 4294967295)]:
        if start > edge and start - edge > best[1]:
            best = (edge, start - edge)
        edge = max(edge, end)
    if best[1] < 65536:
        fail("no free range of 65536 ids left for the containers line; nothing changed")
    return best[0], min(best[1], size)

def sweep(path):  # a killed run of ours left its temporary beside path: gone (its pid is)
    top, base = os.path.split(path)
    for name in os.listdir(top or "."):
        m = re.fullmatch(re.escape(base) + r"[.]([0-9]+)[.]tmp", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            os.unlink(os.path.join(top, name))

def entry(path, line):  # a record line: the file as the tree names it, the line
    name = path[len(os.environ.get("ROOT", "")) :]
    return f"{name} {line}\n".encode()

def say(text):
    try:  # the reader may be gone (install.sh ... | head -1): the edit is done all the same
        print(text, flush=True)
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor may the exit flush fail

def main(argv):
    op = argv[0]
    if op == "env-check":
        env_check(argv[1], sys.stdin.buffer.read())
    elif op == "env-set":
        path, setting = argv[1], argv[2]
        name = setting.split("=", 1)[0]
        data, st = read(path)
        lines, done = [], False
        for line in data.decode("utf-8").splitlines():
            if line.startswith(name + "="):
                if "=" in setting and not done:
                    lines.append(setting)
                done = True
                continue
            lines.append(line)
        if not done and "=" in setting:
            lines.append(setting)
        write(path, "".join(line + "\n" for line in lines).encode(), st, 0o640)
    elif op == "subid-add":
        path, lockpath, record = argv[1:4]
        fd = lock(lockpath)
        sweep(path)
        data, st = read(path)
        text = data.decode("utf-8", "surrogateescape")
        if any(line.startswith("containers:") for line in text.splitlines()):
            return
        start, size = free_range(text.splitlines())
        line = f"containers:{start}:{size}"
        sep = "\n" if text and not text.endswith("\n") else ""
        old, rst = read(record)
        write(record, old + entry(path, line), rst, 0o600)
        write(path, (text + sep + line + "\n").encode("utf-8", "surrogateescape"), st)
        say(f"added {line} to {path}")
        del fd
    elif op == "subid-remove":
        path, lockpath, line, record = argv[1:5]
        fd = lock(lockpath)
        sweep(path)
        data, st = read(path)
        lines = data.decode("utf-8", "surrogateescape").splitlines(keepends=True)
        for i, old in enumerate(lines):
            if old.rstrip("\n") == line:
                del lines[i]
                if not lines and argv[5:] == ["drop-empty"]:
                    os.unlink(path)
                else:
                    write(path, "".join(lines).encode("utf-8", "surrogateescape"), st)
                say(f"removed {line} from {path} (install.sh added it)")
                kept = 0
                break
        else:
            say(f"kept {path}: it has no line {line} as install.sh wrote it (changed since?)")
            kept = 3
        # Forget this record, and every record (any checkpoint) of a line of this file it no longer has:
        # a stale one (a kill before the line was written, a line deleted and added again) must never
        # claim a line someone writes later.
        present = {old.rstrip("\n") for old in lines}
        top = os.path.dirname(os.path.dirname(record))
        mine = entry(path, "")[:-1]
        for rec in sorted({record} | {os.path.join(top, d, "ADDED") for d in os.listdir(top)}):
            if rec != record and not os.path.isfile(rec):
                continue
            old, rst = read(rec)
            stale = lambda e: e.startswith(mine) and e[len(mine) :].rstrip(b"\n").decode("utf-8", "surrogateescape") not in present
            rest = b"".join(e for e in old.splitlines(keepends=True) if e != entry(path, line) and not stale(e))
            if rest == old:
                continue
            if rest:
                write(rec, rest, rst)
            elif rst:
                os.unlink(rec)
        del fd
        return kept

sys.exit(main(sys.argv[1:]))
'
helper() { ROOT=$ROOT "$PYTHON" -I -S -c "$HELPER_PY" "$@"; }
# subid-remove for a restore: a line changed since (kept, exit 3) is no failure of it.
subid_remove() { helper subid-remove "$@" || [ $? = 3 ]; }

# The shadow lock of the tree: the live one is created as lckpwdf would; a
# --root tree without one has no shadow tool working on it.
shadow_lock() {
    if live || [ -e "$ROOT/etc/.pwd.lock" ]; then printf '%s\n' "$ROOT/etc/.pwd.lock"; fi
}

# An env file systemd and the watchdog would read differently is refused, naming file and line.
check_env_files() {
    for _ce_name in api.env watchdog.env; do
        _ce_file=$ROOT$CONF_DIR/$_ce_name
        [ -e "$_ce_file" ] || continue
        [ -f "$_ce_file" ] || fatal "$CONF_DIR/$_ce_name is not a regular file; nothing changed"
        helper env-check "$CONF_DIR/$_ce_name" <"$_ce_file" || exit 1
    done
}

# --- arguments and host ----------------------------------------------------

parse_args() {
    _pa_root_given=0
    while [ $# -gt 0 ]; do
        case $1 in
            --dry-run) DRY_RUN=1 ;;
            --restart-api) RESTART_API=1 ;;
            --plan) PLAN=1 ;;
            --diff) PLAN_DIFF=1 ;;
            --set)
                [ $# -ge 2 ] || usage_error "--set needs NAME=VALUE"
                add_setting "$2"
                shift
                ;;
            --set=*) add_setting "${1#--set=}" ;;
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
                _pa_root_given=1
                shift
                ;;
            --root=*)
                ROOT=${1#--root=}
                _pa_root_given=1
                ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    if [ "$_pa_root_given" = 1 ]; then
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
    [ -z "$SETTINGS" ] || [ "$MODE" = install ] || usage_error "--set goes with an install run only"
    [ "$PLAN_DIFF" = 0 ] || [ "$PLAN" = 1 ] || usage_error "--diff goes with --plan only"
    if [ "$PLAN" = 1 ]; then # read-only, like a dry run: a step that would act only prints
        [ "$MODE" = install ] || usage_error "--plan goes with an install run only"
        DRY_RUN=1
    fi
    case $LOCK_WAIT in "" | *[!0-9]*) usage_error "LEADGEN_INSTALL_LOCK_WAIT must be a whole number of seconds, got '$LOCK_WAIT'" ;; esac
}

# --set NAME=VALUE: a LEADGEN_* key of api.env, its value as the env-file grammar allows.
add_setting() { # NAME=VALUE
    case $1 in
        LEADGEN_*=*) ;;
        *) usage_error "--set needs LEADGEN_NAME=VALUE, got '$1'" ;;
    esac
    case ${1%%=*} in *[!A-Z0-9_]*) usage_error "--set: not a LEADGEN_* name: '${1%%=*}'" ;; esac
    case $1 in *"$NL"*) usage_error "--set ${1%%=*}: the value contains a newline" ;; esac
    _as_why=$(printf '%s\n' "$1" | helper env-check "--set ${1%%=*}" 2>&1) || usage_error "$_as_why"
    SETTINGS="$SETTINGS$1$NL"
}

# Nothing is written outside --root: refuse a directory that resolves
# elsewhere (an absolute symlink inside the tree points at the host). A managed
# file that is itself a symlink is replaced or saved as a link, never written through.
confined() { # PATH
    live && return 0
    _cf_real=$(realpath -m -- "$ROOT$1") || fatal "--root: cannot resolve $ROOT$1"
    case $_cf_real in
        "$ROOT" | "$ROOT"/*) ;;
        *) fatal "--root: $ROOT$1 resolves to $_cf_real, outside $ROOT (a symlink in the tree?); nothing changed" ;;
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

byte_compile() { # MODULE PYC: the bytecode of MODULE installed as $LIB_DIR/leadgen_watchdog.py, for $PYTHON
    "$PYTHON" -I -S -c 'import py_compile, sys
py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True,
                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)' "$1" "$2" "$LIB_DIR/leadgen_watchdog.py"
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
"""LeadGen health watchdog, installed by install.sh: see $DOC_DIR/README.md and $DOC_DIR/docs/."""
import sys

sys.path.insert(0, "$LIB_DIR")
try:
    from leadgen_watchdog import main
except BaseException as error:  # exit 1 would be "handled" under the unit, and info below its LogLevelMax
    sys.stderr.write(f"<3>leadgen-watchdog: cannot load $LIB_DIR/leadgen_watchdog.py: {error!r}\\n")
    sys.exit(3)

sys.exit(main(site={$(launcher_site)}))
EOF
    byte_compile "$SRC/leadgen_watchdog.py" "$STAGE/bytecode" || fatal "cannot byte-compile $SRC/leadgen_watchdog.py"
    cat >"$STAGE/root-mode" <<EOF
# Installed by install.sh because $POLKITD is missing: without polkit a user
# other than root may not restart the API, so the watchdog runs as root, in
# its sandbox. Install polkitd and run install.sh again: it removes this file.
[Service]
User=
Group=
EOF
    metrics_textfile stage
}

# Only a regular file is read (a FIFO would hang the run); anything else is
# planned as a change, which the edit then refuses.
has_subid_range() { [ -f "$1" ] && [ ! -L "$1" ] && grep -q '^containers:' -- "$1"; }

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
    case $SETTINGS in *LEADGEN_IMAGE=*) image=$(printf '%s' "$SETTINGS" | sed -n 's/^LEADGEN_IMAGE=//p' | tail -n 1) ;; esac
    case $SETTINGS in *LEADGEN_APP_ENV_FILE=*) app_env=$(printf '%s' "$SETTINGS" | sed -n 's/^LEADGEN_APP_ENV_FILE=//p' | tail -n 1) ;; esac
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
    elif [ -n "$(find "$app_env" -maxdepth 0 -perm /o=rwx 2>/dev/null)" ]; then
        warn "application env file $app_env holds the API's secrets and other users may read it; close it: chmod 0600 $app_env"
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
    if [ -L "$1" ]; then [ -L "$2" ] && [ "$(readlink -- "$1")" = "$(readlink -- "$2")" ] && return 0 || return 1; fi
    [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" && [ "$(stat -c %a -- "$2")" = "${3#0}" ] || return 1
    live || return 0
    [ "$(stat -c %u:%g -- "$2")" = 0:0 ]
}

# --- checkpoints ------------------------------------------------------------

# A line of a checkpoint's ADDED (the containers lines it added), as the edit writes it.
added_line() { printf '%s\n' "$1" | grep -qxE '/etc/sub[ug]id containers:[0-9]+:[0-9]+'; }

# Every checkpoint's ADDED, read back before --uninstall trusts it: else refused, naming it.
check_added() (
    for name in $(checkpoints); do
        [ -f "$ROOT$BACKUP_DIR/$name/ADDED" ] || continue
        bad=$(grep -nvxE '/etc/sub[ug]id containers:[0-9]+:[0-9]+' "$ROOT$BACKUP_DIR/$name/ADDED" | head -n 1 | cut -d: -f1)
        [ -z "$bad" ] || fatal "checkpoint $name: ADDED line $bad is not one install.sh writes; refusing it, nothing changed"
    done
)

valid_name() { # NAME: a plain name in the backup directory
    case $1 in
        "" | . | .. | *[!A-Za-z0-9._-]* | -* | .*) return 1 ;;
    esac
}

# Every checkpoint directory with its sequence number, in order: a name
# NNNNNN-<UTC time> carries its number; names from before sequences (the bare
# UTC time) count as 0 and come first, in name order. The clock never orders.
sequenced() (
    for dir in "$ROOT$BACKUP_DIR"/*/; do
        [ -d "$dir" ] || continue
        name=$(basename -- "$dir")
        valid_name "$name" || continue
        case $name in
            [0-9][0-9][0-9][0-9][0-9][0-9]-*) printf '%s %s\n' "$((1${name%%-*} - 1000000))" "$name" ;;
            *) printf '0 %s\n' "$name" ;;
        esac
    done | sort -k1,1n -k2,2
)

# The complete checkpoints, oldest first: a MANIFEST whose last line is
# `complete`. One cut short is never taken for a checkpoint.
checkpoints() (
    sequenced | while read -r _ name; do
        [ "$(tail -n 1 "$ROOT$BACKUP_DIR/$name/MANIFEST" 2>/dev/null)" = complete ] || continue
        printf '%s\n' "$name"
    done
)

finished() { [ -e "$ROOT$BACKUP_DIR/$1/FINISHED" ]; }

manifest_value() { # NAME KEY: the value of `KEY value` in its MANIFEST
    sed -n "s/^$2 //p" "$ROOT$BACKUP_DIR/$1/MANIFEST" | head -n 1
}

# Read a checkpoint's MANIFEST, trusting nothing: every line must be one the
# installer writes, naming a managed path. Anything else refuses, unchanged.
check_manifest() { # NAME
    _cm_dir=$ROOT$BACKUP_DIR/$1
    [ -f "$_cm_dir/MANIFEST" ] || fatal "no checkpoint $1 (no $_cm_dir/MANIFEST)"
    [ "$(tail -n 1 "$_cm_dir/MANIFEST")" = complete ] || fatal "checkpoint $1 is incomplete (its MANIFEST does not end with 'complete'); refusing it"
    _cm_dests=$(managed_files | cut -d' ' -f2)
    _cm_dirs=$(managed_dirs)
    _cm_n=0
    while IFS= read -r _cm_line; do
        _cm_n=$((_cm_n + 1))
        _cm_what=${_cm_line%% *}
        _cm_arg=${_cm_line#* }
        _cm_ok=0
        case $_cm_what in
            motorcade-leadgen-checkpoint) [ "$_cm_arg" != 1 ] || _cm_ok=1 ;;
            run) case $_cm_arg in install | rollback | uninstall) _cm_ok=1 ;; esac ;;
            restores | resumes) ! valid_name "$_cm_arg" || _cm_ok=1 ;;
            enablement)
                case $_cm_arg in
                    "$WD_TIMER enabled" | "$WD_TIMER disabled" | "$API_UNIT enabled" | "$API_UNIT disabled") _cm_ok=1 ;;
                esac
                ;;
            file)
                if printf '%s\n' "$_cm_dests" | grep -qxF -- "$_cm_arg" || is_bytecode "$_cm_arg"; then
                    [ -e "$_cm_dir/files$_cm_arg" ] || [ -L "$_cm_dir/files$_cm_arg" ] || fatal "checkpoint $1 names $_cm_arg, but $_cm_dir/files$_cm_arg is missing; refusing it"
                    _cm_ok=1
                fi
                ;;
            absent) if printf '%s\n' "$_cm_dests" | grep -qxF -- "$_cm_arg" || is_bytecode "$_cm_arg"; then _cm_ok=1; fi ;;
            dir-absent) ! printf '%s\n' "$_cm_dirs" | grep -qxF -- "$_cm_arg" || _cm_ok=1 ;;
            setting | setting-absent)
                case ${_cm_arg%%=*} in
                    LEADGEN_*[!A-Z0-9_]*) ;;
                    LEADGEN_?*)
                        if [ "$_cm_what" = setting-absent ]; then
                            [ "$_cm_arg" != "${_cm_arg%%=*}" ] || _cm_ok=1
                        elif printf '%s\n' "$_cm_arg" | helper env-check "checkpoint $1" >/dev/null 2>&1; then
                            _cm_ok=1
                        fi
                        ;;
                esac
                ;;
            complete) _cm_ok=1 ;;
        esac
        [ "$_cm_ok" = 1 ] || fatal "checkpoint $1: MANIFEST line $_cm_n is not one install.sh writes, or names an unmanaged path: $_cm_line; refusing it, nothing changed"
    done <"$_cm_dir/MANIFEST"
}

# NNNNNN-<UTC time>: one more than the highest sequence there (cut-short ones
# too), so a clock stepped back cannot reorder runs; the time is for people.
new_checkpoint_name() (
    last=$(sequenced | tail -n 1 | cut -d' ' -f1)
    printf '%06d-%s\n' "$((${last:-0} + 1))" "$(date -u +%Y%m%dT%H%M%SZ)"
)

# The api.env keys a checkpoint must bring back: each --set key this run
# changes, as it is now (its line, or setting-absent).
settings_now() { # KEYS (NAME per line)
    printf '%s\n' "$1" | while read -r _sn_key; do
        [ -n "$_sn_key" ] || continue
        _sn_line=$(grep -m 1 "^$_sn_key=" "$ROOT$CONF_DIR/api.env" 2>/dev/null) || _sn_line=
        if [ -n "$_sn_line" ]; then echo "setting $_sn_line"; else echo "setting-absent $_sn_key"; fi
    done
}

# Save every managed file (byte for byte, owner, mode, mtime, symlink-ness),
# the api.env keys about to change and both units' enablement, then mark the
# checkpoint complete as its last step. Shared files (/etc/subuid) are not
# copied: only the line a run adds is recorded, in ADDED, by the edit itself.
take_checkpoint() { # RUN KEYS [KEY VALUE]: also `resumes RESUMES`, the run it takes over
    CHECKPOINT=$ROOT$BACKUP_DIR/$(new_checkpoint_name)
    if [ "$DRY_RUN" = 1 ]; then
        info "would save a checkpoint in $CHECKPOINT"
        return 0
    fi
    BACKUP_MADE=
    for _tc_dir in "$BACKUP_DIR" $(parents "$BACKUP_DIR"); do # deepest first
        [ -d "$ROOT$_tc_dir" ] || BACKUP_MADE="$BACKUP_MADE$ROOT$_tc_dir$NL"
    done
    PHASE=checkpoint
    step mkdir -p -m 0700 "$CHECKPOINT/files"
    _tc_present=
    {
        echo "motorcade-leadgen-checkpoint 1"
        echo "run $1"
        [ $# -lt 4 ] || echo "$3 $4"
        [ -z "$RESUMES" ] || echo "resumes $RESUMES"
        while read -r _tc_unit _; do
            if unit_enabled "$_tc_unit"; then echo "enablement $_tc_unit enabled"; else echo "enablement $_tc_unit disabled"; fi
        done <<EOT
$(enablement_links)
EOT
        while read -r _ _tc_dest _ _tc_role; do
            if [ -e "$ROOT$_tc_dest" ] || [ -L "$ROOT$_tc_dest" ]; then
                [ "$_tc_role" = subid ] && continue
                echo "file $_tc_dest"
                _tc_present="$_tc_present ${_tc_dest#/}"
            else
                echo "absent $_tc_dest"
            fi
        done <<EOT
$(managed_files)
EOT
        while read -r _tc_dir; do
            [ -d "$ROOT$_tc_dir" ] || echo "dir-absent $_tc_dir"
        done <<EOT
$(managed_dirs)
EOT
        settings_now "$2"
        echo complete
    } >"$CHECKPOINT/MANIFEST.part" || fatal "cannot write $CHECKPOINT/MANIFEST.part"
    if [ -n "$_tc_present" ]; then
        cd -P -- "$ROOT/"
        # shellcheck disable=SC2086 # our own paths from the table, without spaces
        step cp -a --parents -- $_tc_present "$CHECKPOINT/files/"
        cd /
    fi
    step mv -f "$CHECKPOINT/MANIFEST.part" "$CHECKPOINT/MANIFEST"
    PHASE=changing
    info "checkpoint: $CHECKPOINT"
}

# The run is complete: a later run must not take it for an interrupted one.
mark_finished() {
    [ "$DRY_RUN" = 0 ] && [ -n "$CHECKPOINT" ] || return 0
    step touch "$CHECKPOINT/FINISHED"
    PHASE=finished
}

# Put api.env's keys back, by line, as the `setting` lines say (later lines win).
restore_settings() { # "setting ..." lines
    printf '%s\n' "$1" | while read -r _rs_what _rs_arg; do
        [ -n "$_rs_what" ] || continue
        _rs_key=${_rs_arg%%=*}
        _rs_line=$(grep -m 1 "^$_rs_key=" "$ROOT$CONF_DIR/api.env" 2>/dev/null) || _rs_line=
        if [ "$_rs_what" = setting ] && [ "$_rs_line" != "$_rs_arg" ]; then
            step helper env-set "$ROOT$CONF_DIR/api.env" "$_rs_arg"
        elif [ "$_rs_what" = setting-absent ] && [ -n "$_rs_line" ]; then
            step helper env-set "$ROOT$CONF_DIR/api.env" "$_rs_key"
        fi
    done
}

# Put back the managed files and enablement a checkpoint recorded, and the
# api.env keys SETTINGS ("setting" lines) name. FAILED_RUN=1: the restore after
# this run failed, which also takes back the env files and /etc/subuid lines
# this run itself created; a --rollback never touches those.
restore_checkpoint() { # DIR FAILED_RUN SETTINGS
    _rc_dir=$1
    _rc_units=
    # Disable first, while the unit file is still there.
    while read -r _rc_unit _; do
        if unit_enabled "$_rc_unit" && ! grep -qx "enablement $_rc_unit enabled" "$_rc_dir/MANIFEST"; then
            if [ "$_rc_unit" = "$WD_TIMER" ] && live; then
                step systemctl disable --now "$_rc_unit"
            else
                sctl_step disable "$_rc_unit"
            fi
        fi
    done <<EOT
$(enablement_links)
EOT
    while read -r _ _rc_dest _ _rc_role; do
        _rc_target=$ROOT$_rc_dest
        if [ -e "$_rc_target.new" ] || [ -L "$_rc_target.new" ]; then step rm -f "$_rc_target.new"; fi
        case $_rc_role in
            subid) continue ;; # by line, below
            config) # yours: only one this failed run created goes again
                if [ "$2" = 1 ] && grep -qxF "absent $_rc_dest" "$_rc_dir/MANIFEST" && [ -e "$_rc_target" ]; then
                    step rm -f "$_rc_target"
                fi
                continue
                ;;
        esac
        if grep -qxF "file $_rc_dest" "$_rc_dir/MANIFEST"; then
            file_differs "$_rc_dir" "$_rc_dest" || continue
            [ -d "${_rc_target%/*}" ] || step mkdir -p "${_rc_target%/*}"
            step cp -a "$_rc_dir/files$_rc_dest" "$_rc_target.new"
            step mv -f "$_rc_target.new" "$_rc_target"
        elif [ -e "$_rc_target" ] || [ -L "$_rc_target" ]; then
            step rm -f "$_rc_target"
        else
            continue
        fi
        case $_rc_role in unit | timer | api-unit | root-mode | metrics) _rc_units="$_rc_units $(basename -- "$_rc_dest")" ;; esac
    done <<EOT
$(managed_files)
EOT
    # Another interpreter's bytecode the run removed (no longer a row of the table).
    sed -n 's/^file //p' "$_rc_dir/MANIFEST" | while read -r _rc_dest; do
        if is_bytecode "$_rc_dest" && [ ! -e "$ROOT$_rc_dest" ]; then step cp -a "$_rc_dir/files$_rc_dest" "$ROOT$_rc_dest"; fi
    done
    [ ! -f "$ROOT$CONF_DIR/api.env" ] || restore_settings "$3"
    if [ "$2" = 1 ] && [ -f "$_rc_dir/ADDED" ]; then
        while read -r _rc_dest _rc_line; do
            [ -n "$_rc_line" ] || continue
            if ! added_line "$_rc_dest $_rc_line"; then
                RESTORE_FAILED=1
                warn "checkpoint ${_rc_dir##*/}: an ADDED line is not one install.sh writes; left alone"
                continue
            fi
            _rc_drop=
            if grep -qxF "absent $_rc_dest" "$_rc_dir/MANIFEST"; then _rc_drop=drop-empty; fi
            # shellcheck disable=SC2086 # empty or one word
            step subid_remove "$ROOT$_rc_dest" "$(shadow_lock)" "$_rc_line" "$_rc_dir/ADDED" $_rc_drop
        done <<EOT
$(cat "$_rc_dir/ADDED")
EOT
    fi
    while read -r _rc_d; do
        grep -qxF "dir-absent $_rc_d" "$_rc_dir/MANIFEST" || continue
        if [ -d "$ROOT$_rc_d" ] && [ -z "$(ls -A -- "$ROOT$_rc_d")" ]; then step rmdir "$ROOT$_rc_d"; fi
    done <<EOT
$(managed_dirs)
EOT
    while read -r _rc_unit _; do
        if [ -e "$ROOT$UNIT_DIR/$_rc_unit" ] && grep -qx "enablement $_rc_unit enabled" "$_rc_dir/MANIFEST" && ! unit_enabled "$_rc_unit"; then
            sctl_step enable "$_rc_unit"
        fi
    done <<EOT
$(enablement_links)
EOT
    live || return 0
    [ -z "$_rc_units" ] || step systemctl daemon-reload
    # The timer's active state follows its enablement.
    if [ -e "$UNIT_DIR/$WD_TIMER" ] && unit_enabled "$WD_TIMER"; then
        case " $_rc_units " in
            *" $WD_TIMER "*) step systemctl restart "$WD_TIMER" ;;
            *) unit_active "$WD_TIMER" || step systemctl start "$WD_TIMER" ;;
        esac
    elif unit_active "$WD_TIMER"; then
        step systemctl stop "$WD_TIMER"
    fi
}

# After a failed run's restore: the API runs the unit it ran before the run,
# and the watchdog's pause by this run ends.
restore_api() {
    [ "$API_TOUCHED" = 1 ] || return 0
    if [ "$API_WAS_ACTIVE" = 1 ]; then step systemctl restart "$API_UNIT"; else step systemctl stop "$API_UNIT"; fi
    [ ! -x "$LAUNCHER" ] || [ "$API_WAS_ACTIVE" = 0 ] || step watchdog resume
}

# Remove this run's own checkpoint (after a full restore) and the backup
# directories it created.
drop_checkpoint() {
    step rm -rf "$CHECKPOINT"
    while read -r _dc_dir; do
        if [ -n "$_dc_dir" ] && [ -d "$_dc_dir" ] && [ -z "$(ls -A -- "$_dc_dir")" ]; then step rmdir "$_dc_dir"; fi
    done <<EOT
$BACKUP_MADE
EOT
}

# The restore after a failure, in a subshell that ignores every terminating
# signal (and so do the commands it runs): it cannot be cut short. The run
# itself notes the signals meanwhile and names them once the restore is done.
# Its verdict is its only output: a trap run after it may change $?, not that.
restore_failed_run() (
    trap '' HUP INT TERM QUIT PIPE
    RESTORING=1
    if [ "$PHASE" = checkpoint ]; then
        drop_checkpoint >/dev/null
    else
        restore_checkpoint "$CHECKPOINT" 1 "$(sed -n '/^setting/p' "$CHECKPOINT/MANIFEST")" >&2
        restore_api >&2
        [ "$RESTORE_FAILED" = 1 ] || drop_checkpoint >&2
    fi
    [ "$RESTORE_FAILED" = 1 ] || echo restored
)

# EXIT (and every terminating signal): a failed or interrupted run restores its checkpoint.
on_exit() {
    _ex_status=$?
    for _ex_sig in HUP INT TERM QUIT PIPE; do
        # shellcheck disable=SC2064 # the signal's name, fixed now
        trap "DEFERRED=\"\${DEFERRED}SIG$_ex_sig \"" "$_ex_sig"
    done
    trap - EXIT
    case $_ex_status in 0 | 2 | 3 | 5) ;; *) _ex_status=1 ;; esac
    if [ "$_ex_status" = 1 ] && [ "$PHASE" = checkpoint ] && [ -n "$CHECKPOINT" ]; then
        printf 'ERROR: %s while saving the checkpoint; nothing was changed\n' "${FAILED_STEP:-interrupted}" >&2 || :
        _ex_verdict=$(
            trap "" HUP INT TERM QUIT PIPE
            restore_failed_run
        )
    elif [ "$_ex_status" = 1 ] && [ "$PHASE" = changing ]; then
        printf 'ERROR: %s; restoring checkpoint %s\n' "${FAILED_STEP:-interrupted}" "$(basename -- "$CHECKPOINT")" >&2 || :
        _ex_verdict=$(
            trap "" HUP INT TERM QUIT PIPE
            restore_failed_run
        )
        if [ "$_ex_verdict" = restored ]; then
            printf 'ERROR: restored: the managed files and enablement are as they were before this run\n' >&2 || :
        elif grep -qxF "absent $LIB_DIR/leadgen_watchdog.py" "$ROOT$BACKUP_DIR/$(resolve "${CHECKPOINT##*/}")/MANIFEST"; then # --rollback refuses that
            printf 'ERROR: the restore is incomplete; checkpoint %s kept; remove what it installed: %s --uninstall\n' "$(basename -- "$CHECKPOINT")" "$SELF" >&2 || :
            _ex_status=4
        else
            printf 'ERROR: the restore is incomplete; checkpoint kept: %s --rollback %s\n' "$SELF" "$(basename -- "$CHECKPOINT")" >&2 || :
            _ex_status=4
        fi
    fi
    [ -z "$DEFERRED" ] || printf 'ERROR: %sarrived during the restore; held until it ended\n' "$DEFERRED" >&2 || :
    [ -z "$STAGE" ] || rm -rf -- "$STAGE"
    exit "$_ex_status"
}

# --- install ----------------------------------------------------------------

# A run killed before it finished (kill -9, a power cut) left the newest
# checkpoint, unfinished: it tells what the host looked like before that run.
# Every changing mode takes it over first, once, and says so in one line. This
# run's checkpoint then records `resumes NAME` and stands for it: a --rollback
# of this run lands on the state from before the killed one, never on half of
# it. A killed --rollback is completed by the next --rollback (the same target).
take_over() {
    RESUMES=$(checkpoints | tail -n 1)
    if [ -z "$RESUMES" ] || finished "$RESUMES" || [ -n "$BUSY" ]; then # BUSY: the running run's own
        RESUMES=
        return 0
    fi
    if ! _to_why=$(check_manifest "$RESUMES" 2>&1); then # damaged: the run goes on without it (a rollback cannot)
        _to_why="the run that saved checkpoint $RESUMES did not finish, and ${_to_why#ERROR: }"
        [ "$MODE" != rollback ] || fatal "$_to_why; move $ROOT$BACKUP_DIR/$RESUMES out of $ROOT$BACKUP_DIR, then --rollback goes to the checkpoint before it"
        warn "$_to_why; this run goes on without taking it over"
        RESUMES=
        return 0
    fi
    _to_run=$(manifest_value "$RESUMES" run)
    if [ "$_to_run" = "$MODE" ] && { [ "$MODE" != rollback ] || [ -z "$CHECKPOINT_NAME" ]; }; then
        _to_what="completes it"
    elif [ "$MODE" = rollback ] && [ -z "$CHECKPOINT_NAME" ]; then
        _to_what="undoes it"
    elif grep -qxF "absent $LIB_DIR/leadgen_watchdog.py" "$ROOT$BACKUP_DIR/$(resolve "$RESUMES")/MANIFEST"; then
        _to_what="takes its place" # a first install: --rollback refuses to undo it
    else
        _to_what="takes its place (a --rollback of this run returns to the state before it)"
    fi
    [ "$DRY_RUN" = 0 ] || _to_what="would take it over"
    info "the ${_to_run:-install} run that saved checkpoint $RESUMES did not finish; this run $_to_what"
}

# Is the run taken over a --rollback? Not done until it reaches its target:
# only a run of its own, with a checkpoint, may stand for it.
resumes_rollback() { [ -n "$RESUMES" ] && [ "$(manifest_value "$RESUMES" run)" = rollback ]; }

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

# The plan, settled before anything changes. Sets CHANGES ("source
# destination mode role" lines, source - to remove), SET_CHANGES (--set lines
# api.env lacks), ENABLE (units to enable) and TIMER_ACTION (live, an enabled
# timer: restart when its file changes, start when it is not running).
# The install, --dry-run and --plan all act on (or print) these, and api_action.
plan_changes() {
    CHANGES=
    ENABLE=
    TIMER_ACTION=
    while read -r _pc_src _pc_dest _pc_mode _pc_role; do
        _pc_target=$ROOT$_pc_dest
        if ! wanted "$_pc_role"; then
            case $_pc_role in
                polkit | root-mode | old-bytecode | metrics) if [ -e "$_pc_target" ] || [ -L "$_pc_target" ]; then CHANGES="$CHANGES- $_pc_dest $_pc_mode $_pc_role$NL"; fi ;;
            esac
            continue
        fi
        case $_pc_role in
            config) [ -e "$_pc_target" ] || [ -L "$_pc_target" ] || CHANGES="$CHANGES$_pc_src $_pc_dest $_pc_mode $_pc_role$NL" ;;
            subid) has_subid_range "$_pc_target" || CHANGES="$CHANGES$_pc_src $_pc_dest $_pc_mode $_pc_role$NL" ;;
            *)
                if ! up_to_date "$(source_path "$_pc_src")" "$_pc_target" "$_pc_mode" || [ -e "$_pc_target.new" ]; then
                    CHANGES="$CHANGES$_pc_src $_pc_dest $_pc_mode $_pc_role$NL"
                fi
                ;;
        esac
    done <<EOT
$(managed_files)
EOT
    SET_CHANGES=$(printf '%s' "$SETTINGS" | while IFS= read -r _pc_line; do
        grep -qxF -- "$_pc_line" "$ROOT$CONF_DIR/api.env" 2>/dev/null || printf '%s\n' "$_pc_line"
    done)
    for _pc_unit in "$WD_TIMER" "$API_UNIT"; do
        [ "$_pc_unit" != "$API_UNIT" ] || [ "$API_READY" = 1 ] || continue
        if wanted_enablement "$_pc_unit" "$BEFORE" && ! unit_enabled "$_pc_unit"; then
            ENABLE="$ENABLE $_pc_unit"
        elif ! wanted_enablement "$_pc_unit" "$BEFORE" && [ -z "$BEFORE" ]; then
            info "kept $_pc_unit disabled (yours); enable it with: systemctl enable --now $_pc_unit"
        fi
    done
    if live && unit_enabled "$WD_TIMER"; then
        if printf '%s' "$CHANGES" | grep -q " $UNIT_DIR/$WD_TIMER "; then
            TIMER_ACTION=restart
        elif ! unit_active "$WD_TIMER"; then
            TIMER_ACTION=start
        fi
    fi
    if unit_active "$API_UNIT"; then API_WAS_ACTIVE=1; fi
}

# What the run does to the API once its files are in place (live, API ready):
# restart on --restart-api or a changed --set key of a running API, start
# when this run enables it; else nothing (printed empty).
api_action() {
    live && [ "$API_READY" = 1 ] || return 0
    if [ "$RESTART_API" = 1 ] || { [ -n "$SET_CHANGES" ] && [ "$API_WAS_ACTIVE" = 1 ]; }; then
        echo restart
    elif [ "$API_WAS_ACTIVE" = 0 ] && case " $ENABLE " in *" $API_UNIT "*) true ;; *) false ;; esac then
        echo start
    fi
}

# --plan: the plan above, one line per change (the format is in usage());
# nothing at all when nothing would change.
print_plan() {
    ! resumes_rollback || echo "complete rollback $RESUMES"
    printf '%s' "$CHANGES" | while read -r _pp_src _pp_dest _pp_mode _pp_role; do
        if [ "$_pp_src" = - ]; then echo "- $_pp_dest $_pp_mode $_pp_role"; else echo "+ $_pp_dest $_pp_mode $_pp_role"; fi
    done
    [ -z "$SET_CHANGES" ] || printf '%s\n' "$SET_CHANGES" | sed 's/^/set /'
    for _pp_unit in $ENABLE; do echo "enable $_pp_unit"; done
    [ -z "$TIMER_ACTION" ] || echo "$TIMER_ACTION $WD_TIMER"
    _pp_api=$(api_action)
    [ -z "$_pp_api" ] || echo "$_pp_api $API_UNIT"
}

# --plan --diff: a unified diff per file the plan changes, the installed file
# (only a regular one: never read through a link) against what it becomes.
# The subid rows add a line the edit chooses; a link row has no text.
plan_diff() {
    printf '%s' "$CHANGES" | while read -r _pd_src _pd_dest _ _pd_role; do
        [ "$_pd_role" != subid ] || continue
        [ "$_pd_dest" != "$CONF_DIR/api.env" ] || [ -z "$SET_CHANGES" ] || continue # below, with its keys
        if [ "$_pd_src" = - ]; then diff_file "$_pd_dest" /dev/null; else diff_file "$_pd_dest" "$(source_path "$_pd_src")"; fi
    done
    [ -n "$SET_CHANGES" ] || return 0
    if regular "$ROOT$CONF_DIR/api.env"; then
        cat -- "$ROOT$CONF_DIR/api.env" >"$STAGE/api.env"
    elif [ -e "$ROOT$CONF_DIR/api.env" ] || [ -L "$ROOT$CONF_DIR/api.env" ]; then
        return 0 # not a file the edit would touch (it refuses); the plan's set lines say what was asked
    else
        cat -- "$SRC/units/api.env" >"$STAGE/api.env" # installed from the template first
    fi
    printf '%s\n' "$SET_CHANGES" | while IFS= read -r _pd_line; do helper env-set "$STAGE/api.env" "$_pd_line"; done
    diff_file "$CONF_DIR/api.env" "$STAGE/api.env"
}

regular() { [ -f "$1" ] && [ ! -L "$1" ]; }

diff_file() ( # DEST NEW
    old=$ROOT$1 new=$2 from=$1 to=$1
    regular "$old" || old=/dev/null from=/dev/null
    regular "$new" || new=/dev/null to=/dev/null
    diff -u --label "$from" --label "$to" -- "$old" "$new" || [ $? = 1 ] || fatal "--plan --diff: cannot compare $1 with $2"
)

# The operator's env file stays; when the shipped template changed, say what is new.
report_templates() {
    for _rt_name in api.env watchdog.env; do
        _rt_mine=$ROOT$CONF_DIR/$_rt_name
        _rt_template=$ROOT$DOC_DIR/$_rt_name.template
        if [ ! -e "$_rt_mine" ] || [ ! -e "$_rt_template" ] || cmp -s "$SRC/units/$_rt_name" "$_rt_template"; then continue; fi
        info "kept $CONF_DIR/$_rt_name (yours); the shipped template changed. Compare: diff -u $_rt_mine $_rt_template"
        _rt_new=$(sed -n 's/^#\{0,1\}[[:space:]]*\([A-Z_][A-Z0-9_]*\)=.*/\1/p' "$SRC/units/$_rt_name" | while read -r var; do
            grep -q "^#\{0,1\}[[:space:]]*$var=" "$_rt_mine" || printf ' %s' "$var"
        done)
        [ -z "$_rt_new" ] || info "  settings in the new template that $CONF_DIR/$_rt_name does not mention:$_rt_new"
    done
}

# Verify the units about to be installed, from the sources: a unit with a
# warning never reaches /etc/systemd/system.
verify_units() {
    set --
    while read -r _vu_src _ _ _vu_role; do
        case $_vu_role in unit | timer | api-unit) set -- "$@" "$(source_path "$_vu_src")" ;; esac
    done <<EOT
$CHANGES
EOT
    [ $# -gt 0 ] || return 0
    info "verifying: $*"
    _vu_out=$(systemd-analyze verify --man=no "$@" 2>&1) || fatal "systemd-analyze verify failed; nothing installed: $_vu_out"
    if ! live; then # the binaries belong to the target system, not to this host
        _vu_out=$(printf '%s\n' "$_vu_out" | grep -v 'is not executable: No such file or directory$' || true)
    fi
    [ -z "$_vu_out" ] || fatal "systemd-analyze verify printed warnings; nothing installed:
$_vu_out"
}

# Apply the plan: files, then /etc/subuid and /etc/subgid by line, then the --set keys.
install_files() {
    while read -r _if_src _if_dest _if_mode _if_role; do
        [ -n "$_if_dest" ] || continue
        _if_target=$ROOT$_if_dest
        if [ "$_if_src" = - ]; then # no longer wanted here (the watchdog's mode changed)
            step rm -f "$_if_target"
            continue
        fi
        [ -d "${_if_target%/*}" ] || step mkdir -p "${_if_target%/*}"
        if [ "$_if_role" = subid ]; then
            # The API container's user namespace (--userns=auto) takes its host IDs from the range of "containers".
            step helper subid-add "$_if_target" "$(shadow_lock)" "$CHECKPOINT/ADDED"
            continue
        fi
        # A leftover X.new (a killed run's, or a link planted where others may write) is removed, not
        # written through; mv -T replaces X itself, never a directory X points to.
        if [ -e "$_if_target.new" ] || [ -L "$_if_target.new" ]; then step rm -f -- "$_if_target.new"; fi
        if [ -L "$(source_path "$_if_src")" ]; then
            step cp -P -- "$(source_path "$_if_src")" "$_if_target.new" # a link row: the link itself
        else
            step install -m "$_if_mode" "$(source_path "$_if_src")" "$_if_target.new"
        fi
        step mv -fT -- "$_if_target.new" "$_if_target"
    done <<EOT
$CHANGES
EOT
    printf '%s\n' "$SET_CHANGES" | while IFS= read -r _if_line; do
        [ -z "$_if_line" ] || step helper env-set "$ROOT$CONF_DIR/api.env" "$_if_line"
    done
}

units_changed() { printf '%s' "$CHANGES" | grep -q " \(unit\|timer\|api-unit\|root-mode\|metrics\)\$"; }

# The watchdog's user, before its unit can start (live; a --root tree gets it
# at boot from systemd-sysusers.service). Like a package's system user, it
# stays on rollback and uninstall.
create_user() {
    live || return 0
    getent passwd "$WD_USER" >/dev/null 2>&1 && return 0
    step systemd-sysusers "$SYSUSERS_CONF"
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
    if live && units_changed; then step systemctl daemon-reload; fi
    for _eu_unit in $ENABLE; do
        if [ "$_eu_unit" = "$WD_TIMER" ] && live; then
            step systemctl enable --now "$_eu_unit"
        else
            sctl_step enable "$_eu_unit"
        fi
    done
    [ -z "$TIMER_ACTION" ] || step systemctl "$TIMER_ACTION" "$WD_TIMER"
}

# Seconds since boot: a clock stepped by NTP or by hand cannot stretch or cut a wait.
uptime_s() { cut -d. -f1 /proc/uptime; }

# Poll `check` until healthy, HEALTH_WAIT seconds of wall time in all: each
# check gets only what is left. Sets HEALTH_WHY when it fails; a watchdog
# configuration error (exit 3) is named as that, not as an unhealthy API.
wait_healthy() {
    _wh_end=$(($(uptime_s) + HEALTH_WAIT))
    _wh_out="no check ran"
    info "+ $LAUNCHER check   (until healthy, at most ${HEALTH_WAIT}s)"
    while _wh_left=$((_wh_end - $(uptime_s))) && [ "$_wh_left" -gt 0 ]; do
        _wh_rc=0
        _wh_out=$(timeout -k 1 "$_wh_left" "$LAUNCHER" check 2>&1) || _wh_rc=$?
        case $_wh_rc in
            0)
                info "$_wh_out"
                return 0
                ;;
            3)
                HEALTH_WHY="the watchdog's configuration is invalid, so its check cannot judge the API (leadgen-watchdog check exit 3): $_wh_out"
                return 1
                ;;
        esac
        sleep 1
    done
    HEALTH_WHY="not healthy after ${HEALTH_WAIT}s: $_wh_out; see journalctl -u $API_UNIT -n 50"
    return 1
}

# leadgen-watchdog pause|resume as owner install.sh, so that an operator's own
# pause is neither shortened nor ended. A watchdog from before pause owners
# (an older checkpoint's) refuses --owner as an unknown argument: then, and
# only then, the plain command; any other failure is passed on as it is (a
# plain resume would end the operator's pause too).
# Not through act: its "+ " line names the command that really runs.
watchdog() { # pause DURATION | resume
    _wd_rc=0
    info "+ $LAUNCHER $1 --owner install.sh${2:+ $2}"
    { _wd_err=$("$LAUNCHER" "$1" --owner install.sh ${2:+"$2"} 2>&1 >&3 3>&-) || _wd_rc=$?; } 3>&1
    case $_wd_rc:$_wd_err in
        0:) return 0 ;;
        3:*"unrecognized arguments: --owner"*) ;;
        *)
            [ -z "$_wd_err" ] || printf '%s\n' "$_wd_err" >&2 || :
            return "$_wd_rc"
            ;;
    esac
    info "+ $LAUNCHER $1${2:+ $2}   (this watchdog predates pause owners)"
    "$LAUNCHER" "$1" ${2:+"$2"}
}

# Start or restart the API with the watchdog paused (owner install.sh), wait
# for health, resume. A failure here keeps the change and exits 3, naming the
# checkpoint that undoes it; a signal meanwhile restores (and restarts) as any failure.
cycle_api() { # start|restart
    if [ "$DRY_RUN" = 1 ] && [ "$1" = start ]; then
        info "would run: systemctl start $API_UNIT; wait up to ${HEALTH_WAIT}s for health"
        return 0
    elif [ "$DRY_RUN" = 1 ]; then
        info "would run: $LAUNCHER pause --owner install.sh 10m; systemctl $1 $API_UNIT; wait up to ${HEALTH_WAIT}s for health; $LAUNCHER resume --owner install.sh"
        return 0
    fi
    API_TOUCHED=1
    # A first start needs no pause: the watchdog leaves an API in its start grace alone.
    STEP=$((STEP + 1))
    if [ "$1" != start ] && ! watchdog pause 10m; then
        FAILED_STEP="step $STEP failed: $LAUNCHER pause --owner install.sh 10m ($API_UNIT not restarted)"
        exit 1
    fi
    HEALTH_WHY=
    # A deliberate start: the start limit (5 in 300 s) counts the crash loop of a failed release too, and
    # would refuse the restart of a rollback with "start attempted too often".
    act systemctl reset-failed "$API_UNIT" || :
    if ! act systemctl "$1" "$API_UNIT"; then
        HEALTH_WHY="systemctl $1 $API_UNIT failed: see journalctl -u $API_UNIT -n 50"
    elif ! wait_healthy; then
        :
    fi
    [ "$1" = start ] || watchdog resume || warn "$LAUNCHER resume --owner install.sh failed: the pause expires by itself in 10m"
    [ -n "$HEALTH_WHY" ] || return 0
    mark_finished
    printf 'ERROR: %s\n' "$API_UNIT: $HEALTH_WHY" >&2 || :
    if [ -n "$CHECKPOINT" ]; then
        printf 'ERROR: installed, the API is not healthy; back to the state before this run: %s --rollback %s\n' "$SELF" "$(basename -- "$CHECKPOINT")" >&2 || :
    else
        printf 'ERROR: this run changed no file; the API is not healthy on what was already installed\n' >&2 || :
    fi
    exit 3
}

# Was the running API started before its unit file was last installed?
api_predates_unit() {
    _ap_started=$(systemctl show -P ActiveEnterTimestamp --timestamp=unix "$API_UNIT" 2>/dev/null) || return 1
    _ap_started=${_ap_started#@}
    [ -n "$_ap_started" ] && [ "$(stat -c %Y -- "$UNIT_DIR/$API_UNIT")" -gt "$_ap_started" ]
}

# After the change: the API. Restarted on --restart-api or a changed --set
# key, started when this run enabled it; else say how it stands.
apply_api() {
    live || return 0
    if [ "$API_READY" = 0 ]; then
        [ "$RESTART_API" = 0 ] || warn "--restart-api: $API_UNIT not restarted, see above"
        return 0
    fi
    [ -e "$UNIT_DIR/$API_UNIT" ] || [ "$DRY_RUN" = 1 ] || return 0
    _aa_action=$(api_action)
    if [ -n "$_aa_action" ]; then
        cycle_api "$_aa_action"
    elif [ "$API_WAS_ACTIVE" = 1 ]; then
        if printf '%s' "$CHANGES" | grep -q " $UNIT_DIR/$API_UNIT " || { [ "$DRY_RUN" = 0 ] && api_predates_unit; }; then
            info "$API_UNIT: the running API predates the installed unit and still runs the old one. Apply it with:"
            info "  sudo $SELF --restart-api     (pauses the watchdog around the restart)"
        fi
    elif unit_enabled "$API_UNIT"; then
        warn "the API is down: $API_UNIT is enabled but not running. Start it: sudo systemctl start $API_UNIT"
    fi
}

run_check() {
    live || return 0
    [ "$API_TOUCHED" = 0 ] || return 0 # cycle_api already checked
    if [ "$DRY_RUN" = 1 ]; then
        info "would run: $LAUNCHER check"
        return 0
    fi
    info "+ $LAUNCHER check"
    "$LAUNCHER" check && return 0
    if unit_active "$API_UNIT"; then
        info "(the API is not healthy now; the watchdog counts failures from its next run and restarts it at the threshold)"
    else
        info "(the API is down: $API_UNIT is not running, and the watchdog leaves an inactive unit alone; start it: sudo systemctl start $API_UNIT)"
    fi
}

# The plan an install, its --dry-run and --plan share.
make_plan() {
    stage_files
    take_over
    BEFORE=$RESUMES
    check_api_ready
    plan_changes
    report_templates
}

# --plan: only the plan on stdout (what the run would say goes to stderr).
do_plan() {
    make_plan >&2
    print_plan
    [ "$PLAN_DIFF" = 0 ] || plan_diff
}

# The whole run: plan, checkpoint, apply, verify (the API's health), commit;
# the EXIT trap restores the checkpoint on any failure before the commit.
do_install() {
    make_plan
    if [ -z "$CHANGES" ] && [ -z "$SET_CHANGES" ] && [ -z "$ENABLE" ] && [ -z "$TIMER_ACTION" ] && ! resumes_rollback; then
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
            step touch "$CHECKPOINT/FINISHED"
            CHECKPOINT=
        fi
        apply_api
        run_check
        finish
        return 0
    fi
    verify_units
    report_mode
    _di_keys=$(printf '%s' "$SET_CHANGES" | cut -d= -f1)
    take_checkpoint install "$_di_keys"
    install_files
    create_user
    enable_units
    apply_api
    mark_finished
    run_check
    finish
}

finish() {
    if [ "$PODMAN_MISSING" = 1 ]; then
        printf 'ERROR: %s not found: %s was not installed (the watchdog was)\n' "$PODMAN" "$API_UNIT" >&2 || :
        exit 5
    fi
    if [ "$DRY_RUN" = 1 ]; then info "dry run: nothing was changed"; fi
}

# --- rollback -----------------------------------------------------------------

# A checkpoint that resumed an interrupted run stands for that run's own.
resolve() ( # NAME
    name=$1
    seen=" $1 "
    while next=$(manifest_value "$name" resumes) && [ -n "$next" ]; do
        case $seen in *" $next "*) fatal "checkpoint $1: its resumes lines go round in a loop (at $next); refusing it, nothing changed" ;; esac
        seen="$seen$next "
        name=$next
    done
    printf '%s\n' "$name"
)

previous() ( # NAME: the complete checkpoint just before it
    checkpoints | sed -n "/^$1\$/q; p" | tail -n 1
)

# The checkpoint to go back to when the state is NAME's: skip over rollbacks.
step_back() ( # NAME
    target=$(previous "$1")
    while [ -n "$target" ] && [ "$(manifest_value "$target" run)" = rollback ] && finished "$target"; do
        target=$(previous "$(manifest_value "$target" restores)")
    done
    [ -n "$target" ] || fatal "nothing older to roll back to: the state is already that from before $1, the oldest checkpoint (all: $(checkpoints | tr '\n' ' '))"
    resolve "$target"
)

# A named one is resolved too: the state just before a run that took over a
# killed one is half of that; the state before the killed one is whole.
rollback_target() (
    if [ -n "$CHECKPOINT_NAME" ]; then
        valid_name "$CHECKPOINT_NAME" || fatal "--rollback: not a checkpoint name: $CHECKPOINT_NAME (a plain name in $ROOT$BACKUP_DIR)"
        [ -d "$ROOT$BACKUP_DIR/$CHECKPOINT_NAME" ] || fatal "no checkpoint $CHECKPOINT_NAME in $ROOT$BACKUP_DIR"
        check_manifest "$CHECKPOINT_NAME"
        resolve "$CHECKPOINT_NAME"
        return 0
    fi
    newest=$(checkpoints | tail -n 1)
    [ -n "$newest" ] || fatal "no checkpoint under $ROOT$BACKUP_DIR: nothing to roll back"
    if [ "$(manifest_value "$newest" run)" != rollback ]; then
        resolve "$newest"
    elif finished "$newest"; then
        step_back "$(manifest_value "$newest" restores)"
    else # a killed rollback: this one completes it, to the same target
        target=$(manifest_value "$newest" restores)
        if ! valid_name "$target" || [ ! -f "$ROOT$BACKUP_DIR/$target/MANIFEST" ]; then
            fatal "checkpoint $newest: what it restores is not a checkpoint in $ROOT$BACKUP_DIR; refusing it, nothing changed"
        fi
        printf '%s\n' "$target"
    fi
)

# The api.env keys to put back to reach the state before run NAME: every
# `setting` line of NAME and the runs after it, the oldest value of each key
# last (it wins).
settings_since() ( # NAME
    checkpoints | sed -n "/^$1\$/,\$p" | sed '1!G;h;$!d' | while read -r name; do
        sed -n '/^setting/p' "$ROOT$BACKUP_DIR/$name/MANIFEST"
    done
)

do_rollback() {
    _rb_target=$(rollback_target)
    _rb_why=$(check_manifest "$_rb_target" 2>&1) ||
        fatal "${_rb_why#ERROR: }; move $ROOT$BACKUP_DIR/$_rb_target out of $ROOT$BACKUP_DIR, then --rollback goes to the checkpoint before it"
    if grep -qxF "absent $LIB_DIR/leadgen_watchdog.py" "$ROOT$BACKUP_DIR/$_rb_target/MANIFEST"; then
        fatal "--rollback to before $_rb_target would remove the watchdog altogether: that is $SELF --uninstall; nothing changed"
    fi
    take_over
    for _rb_name in $(checkpoints | sed -n "/^$_rb_target\$/,\$p"); do
        check_manifest "$_rb_name" # their settings are read too
    done
    _rb_settings=$(settings_since "$_rb_target")
    if [ "$DRY_RUN" = 1 ]; then
        info "would roll back to $_rb_target: the state from just before that run"
    else
        info "rolling back to $_rb_target: the state from just before that run"
    fi
    # The API is restarted when its unit or api.env differ from before this run, or before the killed run it completes.
    _rb_from=$ROOT
    [ -z "$RESUMES" ] || _rb_from=$ROOT$BACKUP_DIR/$(resolve "$RESUMES")/files
    _rb_api_before=$(describe "$_rb_from$UNIT_DIR/$API_UNIT")$(describe "$_rb_from$CONF_DIR/api.env")
    take_checkpoint rollback "$(printf '%s\n' "$_rb_settings" | sed -n 's/^setting[^ ]* \([A-Z0-9_]*\).*/\1/p' | sort -u)" restores "$_rb_target"
    restore_checkpoint "$ROOT$BACKUP_DIR/$_rb_target" 0 "$_rb_settings"
    # Bytecode is derived: a checkpoint of another interpreter's (Debian 12's 3.11, now under 13's 3.13) brings back
    # that one's; this one's is built too, or the launcher would compile the module on every start.
    _rb_pyc=$ROOT$LIB_DIR/__pycache__/leadgen_watchdog.$CACHE_TAG.pyc
    if [ -f "$ROOT$LIB_DIR/leadgen_watchdog.py" ] && [ ! -e "$_rb_pyc" ]; then
        step byte_compile "$ROOT$LIB_DIR/leadgen_watchdog.py" "$_rb_pyc.new"
        step chmod 0644 "$_rb_pyc.new"
        step mv -fT -- "$_rb_pyc.new" "$_rb_pyc"
    fi
    # The API unit's user namespace needs a containers line: after an --uninstall took ours out, ours goes back.
    if [ -e "$ROOT$UNIT_DIR/$API_UNIT" ]; then
        for _rb_file in /etc/subuid /etc/subgid; do
            has_subid_range "$ROOT$_rb_file" || step helper subid-add "$ROOT$_rb_file" "$(shadow_lock)" "$CHECKPOINT/ADDED"
        done
    fi
    if live && [ "$DRY_RUN" = 0 ] && [ "$_rb_api_before" != "$(describe "$UNIT_DIR/$API_UNIT")$(describe "$CONF_DIR/api.env")" ] &&
        { unit_active "$API_UNIT" || unit_enabled "$API_UNIT"; }; then
        API_WAS_ACTIVE=1
        API_READY=1
        RESTART_API=1
        apply_api
    fi
    mark_finished
    if [ "$DRY_RUN" = 1 ]; then
        info "dry run: nothing was changed; it would roll back to $_rb_target"
    else
        info "rolled back to $_rb_target"
    fi
}

# --- uninstall ----------------------------------------------------------------

do_uninstall() {
    take_over
    check_added
    _un_remove=
    while read -r _ _un_dest _ _un_role; do
        case $_un_role in code | old-bytecode | unit | timer | doc | sysusers | polkit | root-mode | metrics) ;; *) continue ;; esac
        if [ -e "$ROOT$_un_dest" ] || [ -L "$ROOT$_un_dest" ]; then _un_remove="$_un_remove $_un_dest"; fi
    done <<EOT
$(managed_files)
EOT
    _un_metrics=$(env_value "$ROOT$CONF_DIR/watchdog.env" LEADGEN_WATCHDOG_METRICS_FILE 2>/dev/null) || _un_metrics=
    case $_un_metrics in /*.prom) confined "${_un_metrics%/*}" ;; *) _un_metrics= ;; esac
    if [ -n "$_un_remove" ] || unit_enabled "$WD_TIMER" || resumes_rollback; then
        take_checkpoint uninstall ""
        if unit_enabled "$WD_TIMER"; then
            if live; then step systemctl disable --now "$WD_TIMER"; else sctl_step disable "$WD_TIMER"; fi
        fi
        for _un_unit in "$WD_TIMER" "$WD_SERVICE"; do
            if unit_active "$_un_unit"; then step systemctl stop "$_un_unit"; fi
        done
        for _un_dest in $_un_remove; do
            step rm -f "$ROOT$_un_dest"
        done
        for _un_dir in "$LIB_DIR/__pycache__" "$LIB_DIR" "$DOC_DIR/docs" "$DOC_DIR" "${ROOT_MODE_DROPIN%/*}"; do
            if [ -d "$ROOT$_un_dir" ] && [ -z "$(ls -A -- "$ROOT$_un_dir")" ]; then step rmdir "$ROOT$_un_dir"; fi
        done
        if live; then step systemctl daemon-reload; fi
        mark_finished
    elif [ -n "$RESUMES" ] && [ "$DRY_RUN" = 0 ]; then
        step touch "$ROOT$BACKUP_DIR/$RESUMES/FINISHED"
    fi
    # Not managed files: removed once the rest is done (a rerun finishes them
    # when a run is cut short here): the failure counter and pauses, the metrics
    # textfile (node_exporter would serve its last sample for ever, and
    # LeadgenWatchdogDown page for ever), and the subuid lines install.sh added.
    # The change is committed: no signal may now end the run with exit 1, "as before".
    trap '' HUP INT TERM QUIT PIPE
    _un_left=
    if [ -e "$ROOT$STATE_DIR" ]; then
        _un_left="$_un_left $STATE_DIR"
        act rm -rf "$ROOT$STATE_DIR" || warn "could not remove $ROOT$STATE_DIR"
    fi
    if [ -n "$_un_metrics" ] && [ -f "$ROOT$_un_metrics" ]; then
        _un_left="$_un_left $_un_metrics"
        act rm -f "$ROOT$_un_metrics" || warn "could not remove $ROOT$_un_metrics"
    fi
    remove_subid_lines
    if live; then act systemctl reset-failed "$WD_SERVICE" "motorcade-leadgen-notify@*" 2>/dev/null || :; fi
    if [ "$DRY_RUN" = 1 ]; then
        info "dry run: nothing was changed; it would remove the watchdog ($API_UNIT and $CONF_DIR/ would stay)"
    elif [ -n "$CHECKPOINT" ] && ! grep -qxF "absent $LIB_DIR/leadgen_watchdog.py" "$ROOT$BACKUP_DIR/$(resolve "${CHECKPOINT##*/}")/MANIFEST"; then
        info "watchdog removed; $API_UNIT and $CONF_DIR/ are left in place (undo: $SELF --rollback)"
    elif [ -n "$CHECKPOINT" ]; then # it took over a killed first install: --rollback would refuse
        info "watchdog removed; $API_UNIT and $CONF_DIR/ are left in place"
    elif [ -n "$_un_left$_sl_removed" ]; then
        info "the watchdog was already removed; removed what an earlier --uninstall left:$_un_left$_sl_removed"
    else
        info "nothing to remove: the watchdog is not installed"
    fi
}

# The containers lines of /etc/subuid and /etc/subgid that install.sh added,
# each only as install.sh wrote it. The record is the ADDED file of the run
# that added it, in its checkpoint (kept by rollbacks and re-installs); the
# removal takes the line out of it. A line there before install.sh, or changed
# since, stays: said once.
remove_subid_lines() {
    _sl_removed=
    _sl_kept=
    for _sl_dest in /etc/subuid /etc/subgid; do
        _sl_record=
        for _sl_name in $(checkpoints | sed '1!G;h;$!d'); do # newest first
            if grep -q "^$_sl_dest " "$ROOT$BACKUP_DIR/$_sl_name/ADDED" 2>/dev/null; then
                _sl_record=$ROOT$BACKUP_DIR/$_sl_name/ADDED
                break
            fi
        done
        if [ -n "$_sl_record" ]; then
            _sl_line=$(sed -n "s|^$_sl_dest ||p" "$_sl_record" | tail -n 1)
            _sl_rc=0
            act helper subid-remove "$ROOT$_sl_dest" "$(shadow_lock)" "$_sl_line" "$_sl_record" || _sl_rc=$?
            case $_sl_rc in
                0) _sl_removed="$_sl_removed $_sl_dest:$_sl_line" ;;
                3) ;; # kept (changed since): the edit said so
                *) warn "could not remove $_sl_line from $ROOT$_sl_dest (see above): remove that line by hand" ;;
            esac
        elif has_subid_range "$ROOT$_sl_dest"; then
            _sl_kept="$_sl_kept $_sl_dest"
        fi
    done
    [ -z "$_sl_kept" ] || info "kept the containers: line of$_sl_kept: no record that install.sh added it"
    if [ -n "$_sl_removed" ] && [ -e "$ROOT$UNIT_DIR/$API_UNIT" ]; then
        info "$API_UNIT stays, and its next start needs a containers: line again: run $SELF to add one"
    fi
}

# One run at a time, like dpkg's lock: held on fd 9 for the whole run and
# dropped by the kernel however the run ends. A --root tree is locked on its
# own directory, so that locking writes nothing into it.
take_lock() {
    if live; then
        [ -d "${LIVE_LOCK%/*}" ] || fatal "${LIVE_LOCK%/*} does not exist: no place for the install lock"
        _tl_path=$LIVE_LOCK
        exec 9>>"$_tl_path"
    else
        _tl_path=$ROOT
        exec 9<"$ROOT/"
    fi
    command -v flock >/dev/null 2>&1 || fatal "flock not found (util-linux): it keeps two runs apart"
    flock -n 9 && return 0
    info "waiting up to ${LOCK_WAIT}s for the install.sh run holding $_tl_path ($(lock_holder "$_tl_path"))"
    flock -w "$LOCK_WAIT" 9 ||
        fatal "another install.sh run holds $_tl_path ($(lock_holder "$_tl_path")) after ${LOCK_WAIT}s; nothing changed"
}

# Who holds the lock: the process whose fd 9 on it carries the lock (/proc/PID/fdinfo).
# --dry-run and --plan never wait for the lock, nor create it: they only look
# whether a run holds it. If one does, they say so, and its unfinished
# checkpoint is that run's own, not a killed run's to take over.
busy_lock() {
    BUSY=
    if live; then _bl_path=$LIVE_LOCK; else _bl_path=$ROOT; fi
    [ -e "$_bl_path" ] && command -v flock >/dev/null 2>&1 || return 0
    if live; then exec 9<"$_bl_path"; else exec 9<"$ROOT/"; fi
    flock -n 9 && return 0
    BUSY=$(lock_holder "$_bl_path")
    warn "an install.sh run ($BUSY) holds $_bl_path and is changing the host now: what follows is the host half-way through it"
}

lock_holder() ( # PATH
    for fd in /proc/[0-9]*/fd/9; do
        [ "$(readlink -- "$fd" 2>/dev/null)" = "$1" ] || continue
        pid=${fd#/proc/}
        pid=${pid%%/*}
        grep -q '^lock:' "/proc/$pid/fdinfo/9" 2>/dev/null || continue
        args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        case $args in *install.sh*) ;; *) continue ;; esac
        case " $args " in
            *" --uninstall "*) mode=--uninstall ;;
            *" --rollback"*) mode=--rollback ;;
            *) mode=install ;;
        esac
        printf 'pid %s, mode %s\n' "$pid" "$mode"
        return 0
    done
    echo "holder's pid unknown"
)

parse_args "$@"
if [ "$MODE" = list ]; then
    CACHE_TAG=$(cache_tag)
    managed_files
    exit 0
fi
trap on_exit EXIT
for _sig in HUP INT TERM QUIT PIPE; do
    # shellcheck disable=SC2064 # the signal's name, fixed now
    trap "FAILED_STEP='interrupted (SIG$_sig)'; exit 1" "$_sig"
done
preflight
if [ "$DRY_RUN" = 1 ]; then busy_lock; else take_lock; fi
[ "$MODE" != install ] || check_env_files
case $MODE in
    install) if [ "$PLAN" = 1 ]; then do_plan; else do_install; fi ;;
    rollback) do_rollback ;;
    uninstall) do_uninstall ;;
esac
