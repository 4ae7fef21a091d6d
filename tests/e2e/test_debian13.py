"""What a Debian 13 host needs that a Debian 12 host did not, checked on the guest LEADGEN_E2E_DISTRO names.

podman 5 (Debian 13) publishes ports through netavark, which only recommends
nftables; without `nft` the API's `--publish=127.0.0.1:8000:8000` fails at
start. podman 4.3 (Debian 12) uses CNI plugins and iptables, and needs no nft.
"""

from __future__ import annotations

from harness import PROJECT
from podmanhost import PODMAN_ENV, podman_box

NFT_WARNING = "WARNING: nft not found: podman's netavark needs it to publish 127.0.0.1:8000 (apt-get install nftables)"


def test_install_warns_when_netavark_would_publish_without_nft() -> None:
    """Without nft, install.sh warns on the netavark guest (trixie) and not on the CNI guest (bookworm)."""
    with podman_box() as box:
        backend = box.sh(f"env {PODMAN_ENV} podman info --format '{{{{.Host.NetworkBackend}}}}'").stdout.strip()
        assert backend == {"bookworm": "cni", "trixie": "netavark"}[box.distro]
        box.sh("rm /usr/sbin/nft")
        done = box.sh(f"env {PODMAN_ENV} {PROJECT}/install.sh", check=False)
        assert (NFT_WARNING in done.stderr.splitlines()) == (backend == "netavark"), done.stderr
        api = box.sh("journalctl --no-pager -u motorcade-leadgen-api.service", check=False).stdout
        if backend == "netavark":  # the warning is true: the API cannot start, and install.sh says so
            assert done.returncode != 0 and "unable to execute nft" in api, (done.stderr, api)
        else:
            assert done.returncode == 0, done.stderr
