#!/bin/sh
# Times `leadgen_watchdog.py check` against a bare urllib GET and curl, with
# hyperfine, against a local health server; prints the median ratios and the
# peak RSS. Needs hyperfine, curl and busybox (Debian: hyperfine curl busybox-static).
#
#   bench/run.sh [RUNS]
#
# Two forms of the watchdog are timed: the repository script run as the main
# program (Python compiles it on every start) and the installed entry point,
# which imports the byte-compiled module exactly as install.sh lays it out.
set -eu
cd "$(dirname "$0")/.."
RUNS=${1:-50}
PY="/usr/bin/python3 -I"
work=$(mktemp -d)
server=
cleanup() {
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port/lead/health"
mkdir -p "$work/www/lead" "$work/lib"
printf '{"status":"ok"}\n' >"$work/www/lead/health"
busybox httpd -f -p "127.0.0.1:$port" -h "$work/www" &
server=$!

# The installed layout: module + its .pyc, and the launcher install.sh writes.
cp leadgen_watchdog.py "$work/lib/"
$PY -m py_compile "$work/lib/leadgen_watchdog.py"
cat >"$work/leadgen-watchdog" <<LAUNCHER
import sys

sys.path.insert(0, "$work/lib")
from leadgen_watchdog import main

sys.exit(main())
LAUNCHER

for _ in 1 2 3 4 5 6 7 8 9 10; do
    if curl -fsS "$url" >/dev/null 2>&1; then break; fi
    sleep 0.1
done

hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$work/times.json" \
    -n bare-urllib "$PY bench/bare_get.py $url" \
    -n check-script "$PY leadgen_watchdog.py check --url $url" \
    -n check-installed "$PY $work/leadgen-watchdog check --url $url" \
    -n curl "curl -fsS $url"

$PY - "$work/times.json" "$url" "$work/leadgen-watchdog" <<'REPORT'
import json
import os
import subprocess
import sys

times = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
url, launcher = sys.argv[2], sys.argv[3]
base = times["bare-urllib"]["median"]
print("\nmedian wall time, and ratio to the bare urllib GET (target for the check: <= 1.25x)")
for name, result in times.items():
    print(f"  {name:16} {result['median'] * 1000:7.1f} ms  {result['median'] / base:5.2f}x")


def peak_rss_mib(argv):
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, _, usage = os.wait4(child.pid, 0)
    return usage.ru_maxrss / 1024


py = ["/usr/bin/python3", "-I"]
print("\npeak RSS (target for the check: <= 22 MiB)")
for name, argv in (
    ("bare-urllib", [*py, "bench/bare_get.py", url]),
    ("check-script", [*py, "leadgen_watchdog.py", "check", "--url", url]),
    ("check-installed", [*py, launcher, "check", "--url", url]),
):
    print(f"  {name:16} {min(peak_rss_mib(argv) for _ in range(5)):5.1f} MiB")
REPORT
