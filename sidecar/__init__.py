"""runsync: W&B-style save and restore of run files, for every training pod on Kubernetes.

This package is the sidecar, restore-init, the CLI and the SDK:

    import runsync
    runsync.save("checkpoints/*.pt")          # W&B's wandb.save, policy live by default
    runsync.flush()                            # returns once it is durable in S3
    f = runsync.restore("checkpoints/last.pt") # W&B's wandb.restore; f.name is the local path
    runsync.run.dir, runsync.run.path

In a pod the sidecar does the work (see sdk.py); elsewhere call `runsync.init(...)` first.
"""

__version__ = "0.1.0"
_SDK = ("finish", "flush", "init", "restore", "save")
"""The SDK's public calls, loaded on first use: `runsync restore-init` and the sidecar import
this package too, and need none of sdk.py."""


def __getattr__(name: str):
    if name in _SDK or name == "run":
        from . import sdk

        return sdk.__getattr__("run") if name == "run" else getattr(sdk, name)
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_SDK, "run"])
