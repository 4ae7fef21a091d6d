"""The baseline: the least a Python health check can do (five lines of urllib)."""

import sys
import urllib.request

with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    response.read()
