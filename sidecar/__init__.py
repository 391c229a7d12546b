"""runsync: W&B-style save and restore of run files, for every training pod on Kubernetes.

This package is the sidecar, restore-init, the CLI and the SDK (`import runsync`). The SDK's
calls (`save`, `restore`, `flush`, `run`) arrive with their own issue; today the package holds
the pieces they share: `config` (annotations), `keys` (storage layout), `manifest`, `transfer`.
"""

__version__ = "0.1.0"
