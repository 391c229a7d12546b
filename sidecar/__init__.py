"""runsync: W&B-style save and restore of run files, for every training pod on Kubernetes.

This package is the sidecar, restore-init, the CLI and the SDK:

    import runsync
    runsync.save("checkpoints/*.pt")          # W&B's wandb.save, policy live by default
    runsync.flush()                            # returns once it is durable in S3
    f = runsync.restore("checkpoints/last.pt") # W&B's wandb.restore; f.name is the local path
    runsync.run.dir, runsync.run.path

In a pod the sidecar does the work (see sdk.py); elsewhere call `runsync.init(...)` first.
"""

from .sdk import finish, flush, init, restore, save  # noqa: F401 - the SDK's public calls

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "run":
        from . import sdk

        return sdk.__getattr__("run")
    raise AttributeError(name)
