#!/usr/bin/env python3
"""A recording stand-in for systemctl, for unit tests only.

Reads its script from the JSON file named by $FAKE_SYSTEMCTL_CONTROL and
appends every argv to calls.jsonl beside it. The script says what `show`
reports (the "unit" properties), and how `restart` / `reset-failed` behave
(exit code, stderr, seconds to hang). A successful restart gives the unit a
new InvocationID, as systemd does.
"""

import json
import os
import sys
import time

control = os.environ["FAKE_SYSTEMCTL_CONTROL"]
with open(control) as handle:
    script = json.load(handle)
with open(os.path.join(os.path.dirname(control), "calls.jsonl"), "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\n")

verb = sys.argv[1]
behaviour = script.get(verb, {})
time.sleep(behaviour.get("sleep", 0))
sys.stderr.write(behaviour.get("stderr", ""))
if verb == "show" and "raw_show" in script:  # bytes as systemd might print them, given as latin-1 text
    sys.stdout.flush()
    sys.stdout.buffer.write(script["raw_show"].encode("latin-1"))
elif verb == "show":
    wanted = sys.argv[2].split("=", 1)[1].split(",")
    for name in wanted:
        print(f"{name}={script['unit'].get(name, '')}")
elif verb == "restart" and behaviour.get("rc", 0) == 0:
    script["restarts"] = script.get("restarts", 0) + 1
    script["unit"]["InvocationID"] = f"invocation-after-restart-{script['restarts']}"
    script["unit"]["ActiveState"] = "active"
    with open(control, "w") as handle:
        json.dump(script, handle)
sys.exit(behaviour.get("rc", 0))
