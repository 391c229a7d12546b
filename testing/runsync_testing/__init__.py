"""runsync's test tooling: run the operator, a patched pod and an S3 server on one machine.

- `locals3`: a SeaweedFS S3 server on loopback.
- `localkube`: an API stub, the real operator as a process.
- `localpod`: a patched pod's containers as local processes, as a kubelet runs them.
- `kubelet`: what a kubelet does to a container (its users, a read-only root, fsGroup on volumes).
- `ports`, `downward`: free loopback ports; the downward-API annotations file as a kubelet writes it.

Not part of the runsync package or its image: tests, examples/demo.py and bench/ import it.
"""
