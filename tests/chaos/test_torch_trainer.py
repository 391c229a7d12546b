"""A real PyTorch trainer (examples/ddp_trainer.py: DDP, 2 gloo ranks, DCP every step, `last.pt`
through a temp name, rotation with shutil.rmtree, `runsync.flush()`) preempted at random moments,
inside a save and inside a rotation, through the pod's pieces: the sidecar beside it, then
restore-init (or `runsync restore` when the node was lost) for the replacement.

Every restore is checked with PyTorch itself: each restored `step-N` loads with `dcp.load`, holds
step N and the weights saved at step N; `last.pt` loads with `torch.load(weights_only=True)`, the
same; nothing is older than the last step `flush()` confirmed; nothing else is restored.

torch is imported at the top on purpose: without it these trials fail, they never pass in silence
(scripts/setup installs `.[torch]`).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import run_trials

from harness import RUNSYNC, Sidecar, restore_init, tree, wait_for
from runsync import contract

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import ddp_trainer  # noqa: E402

pytestmark = [pytest.mark.s3, pytest.mark.slow]
TRAINER = ddp_trainer.__file__
GRACE = 10.0
DIM = 256  # 0.5 MB of weights: a few MB of checkpoints per step with the shards and last.pt
KEEP = 3
STYLES = ("kubelet", "sigterm-all", "node-lost")
STRIKES = ("anytime", "save", "rotation")


def lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []  # a torn last line is no line


def strike_when(phase_log: Path, strike: str, rng) -> None:
    """Return at the moment to strike: a random one, or as a save or a rotation starts."""
    if strike == "anytime":
        time.sleep(rng.uniform(0.0, 2.0))
        return
    seen = len(lines(phase_log))
    # A rotation deletes only once more than KEEP step dirs exist.
    wanted = (lambda l: l.startswith("save ")) if strike == "save" else \
        (lambda l: l.startswith("rotate ") and int(l.split()[1]) > KEEP)
    skip = rng.randint(0, 2)
    wait_for(lambda: sum(map(wanted, lines(phase_log)[seen:])) > skip, timeout=120, interval=0.005,
             what=f"the trainer to start a {strike}")
    time.sleep(rng.uniform(0.0, 0.05))


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def wait_or_kill(proc: subprocess.Popen, timeout: float, group: bool) -> bool:
    """Wait up to `timeout`; then SIGKILL, as the kubelet does at the grace period's end. True if it overran."""
    try:
        proc.wait(max(0.1, timeout))
        return False
    except subprocess.TimeoutExpired:
        kill_group(proc, signal.SIGKILL) if group else proc.kill()
        proc.wait()
        return True


def preempt(sc: Sidecar, trainer: subprocess.Popen, style: str) -> int:
    """Take the pod down as `style` says; how many processes overran the grace period."""
    start = time.monotonic()
    if style == "node-lost":
        kill_group(trainer, signal.SIGKILL)
        sc.proc.kill()
        trainer.wait()
        sc.proc.wait()
        return 0
    if style == "kubelet":  # preStop and SIGTERM to the app at once; the sidecar's SIGTERM after it exits
        subprocess.run([RUNSYNC, "sidecar", "--pre-stop"], env=sc.env, capture_output=True, timeout=30)
        kill_group(trainer, signal.SIGTERM)
        overran = wait_or_kill(trainer, GRACE, group=True)
        sc.proc.send_signal(signal.SIGTERM)
    else:  # SIGTERM to every process of the pod at once
        kill_group(trainer, signal.SIGTERM)
        sc.proc.send_signal(signal.SIGTERM)
        overran = wait_or_kill(trainer, GRACE, group=True)
    return overran + wait_or_kill(sc.proc, GRACE - (time.monotonic() - start), group=False)


def check_restore(dest: Path, saved: dict[int, set[str]], flushed: int) -> int:
    """Load everything restored with PyTorch; the newest step restored."""
    names = sorted(tree(dest))
    steps = sorted({int(n.split("/")[1].split("-")[1]) for n in names if n.startswith("ckpt/step-")})
    unexpected = [n for n in names if n != "ckpt/last.pt" and not n.startswith("ckpt/step-")]
    assert not unexpected, f"restored files the trainer never completed: {unexpected}"
    assert steps, "no checkpoint dir restored"
    for step in steps:
        state = {"model": ddp_trainer.model_of(DIM).state_dict(), "step": torch.tensor(0)}
        try:
            dcp.load(state, checkpoint_id=str(dest / f"ckpt/step-{step}"), no_dist=True)
        except BaseException as err:  # noqa: BLE001 - a torn checkpoint fails in many ways; DCP's
            if isinstance(err, KeyboardInterrupt):  # CheckpointException is a BaseException
                raise
            raise AssertionError(f"step-{step} does not load with dcp.load: {err!r}"[:600]) from None
        assert int(state["step"]) == step, f"step-{step} holds step {int(state['step'])}"
        assert ddp_trainer.digest(state["model"]) in saved.get(step, ()), f"step-{step}: not the weights saved then"
    try:
        last = torch.load(dest / "ckpt/last.pt", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a half-written file fails in many ways
        raise AssertionError(f"last.pt does not load with torch.load: {err!r}"[:600]) from None
    assert ddp_trainer.digest(last["model"]) in saved.get(last["step"], ()), f"last.pt: not step {last['step']}'s weights"
    assert last["step"] >= flushed, f"last.pt is step {last['step']}, older than the flushed step {flushed}"
    assert steps[-1] >= flushed, f"newest step restored is {steps[-1]}, older than the flushed step {flushed}"
    return steps[-1]


def trial(tmp_path: Path, s3_env: dict, i: int, rng) -> dict:
    # A Latin square: any 3 consecutive trials cover every kill style and every moment, so the
    # short count (3) strikes inside a save and inside a rotation too; 9 cover every pair.
    style, strike = STYLES[i % 3], STRIKES[(i + i // 3) % 3]
    name = f"ddp-{i}"
    run = f"team-a/torch/{name}"
    annotations = {contract.SAVE: "ckpt/**:live"}
    run_dir = tmp_path / name
    run_dir.mkdir()
    logs = {k: tmp_path / f"{name}-{k}.log" for k in ("flushed", "saved", "phase", "trainer")}
    sc = Sidecar(run_dir, s3_env, annotations, tmp_path, run=run, grace=GRACE, settle=0.3,
                 extra_env={contract.ENV_HOLDER: f"{name}-pod"})
    sc.log_path = tmp_path / f"{name}-sidecar.log"
    sc.start()
    args = [sys.executable, TRAINER, "--steps", "100000", "--dim", str(DIM), "--keep", str(KEEP),
            "--sleep", str(rng.choice([0.0, 0.1])), "--flush-log", str(logs["flushed"]),
            "--saved-log", str(logs["saved"]), "--phase-log", str(logs["phase"])]
    if strike == "rotation":
        args += ["--slow-unlink", "0.2"]  # a slow disk: the kill lands between two unlinks
    trainer = subprocess.Popen(args, env=dict(sc.env), stdout=open(logs["trainer"], "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_for(lambda: lines(logs["flushed"]), timeout=240, what="a first confirmed flush")
        strike_when(logs["phase"], strike, rng)
        overran = preempt(sc, trainer, style)
    finally:
        kill_group(trainer, signal.SIGKILL)
        sc.stop()
    flushed = max(int(x) for x in lines(logs["flushed"]))
    saved: dict[int, set[str]] = collections.defaultdict(set)
    for line in lines(logs["saved"]):
        step, sha = line.split()
        saved[int(step)].add(sha)

    dest = tmp_path / f"{name}-replacement"
    if style == "node-lost":  # the lease is still held by the lost node: a user restores by hand
        done = subprocess.run([RUNSYNC, "restore", run, "--to", str(dest)], env=sc.env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        done = restore_init(s3_env, dest, annotations, tmp_path, run=run, holder=f"{name}-new", grace=GRACE,
                            timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    restored = check_restore(dest, saved, flushed)
    return {"style": style, "strike": strike, "restored": restored, "flushed": flushed, "overran": overran}


def test_a_real_ddp_trainer_preempted_restores_what_pytorch_loads(tmp_path, s3_env, tally):
    scenario = "preemption, PyTorch DDP trainer"
    outcomes: list[dict] = []
    count, failures = run_trials(scenario, lambda i, rng: outcomes.append(trial(tmp_path, s3_env, i, rng)))
    notes = []
    for style in STYLES:
        mine = [o for o in outcomes if o["style"] == style]
        if mine:
            same = sum(o["restored"] == o["flushed"] for o in mine)
            notes.append(f"{style}: {len(mine)} loaded OK, restored step = flushed {same}, "
                         f"> flushed {len(mine) - same}")
    tally.record(scenario, "every restored step-N loads with dcp.load, last.pt with torch.load, "
                 "values as saved, never older than the flushed step", count, len(failures), "; ".join(notes))
    assert not failures, "\n".join(failures)
