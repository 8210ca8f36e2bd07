"""`egress-sidecar redteam`: probes a deployed sidecar from the gateway's position."""
