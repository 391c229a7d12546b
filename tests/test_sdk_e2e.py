"""The SDK as a training script uses it: in a pod (through the sidecar) and embedded (a laptop)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import Store, git, ident_of, wait_for
from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import runsync
    mode = sys.argv[1]
    if mode == "embedded":
        runsync.init(dir=sys.argv[2], run=sys.argv[3], store=sys.argv[4])
    run = runsync.run
    os.chdir(run.dir)
    names = runsync.save("results/*.csv")              # before the files exist
    os.makedirs("results", exist_ok=True)
    for i in range(3):
        with open(f"results/epoch-{i}.csv", "w") as f:
            f.write(f"epoch,{i}\\n")
    with open("notes.txt", "w") as f:                    # named by no rule: uploaded at the end
        f.write("end")
    seq = runsync.flush(timeout=60)
    print(json.dumps({"dir": run.dir, "path": run.path, "id": run.id, "seq": seq, "before": names}))
''')


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_script(args, env, cwd) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def app_env(sc) -> dict:
    """What the operator gives an app container: the run dir, the run path, the API; no keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update({contract.ENV_DIR: sc.env[contract.ENV_DIR], contract.ENV_RUN_PATH: sc.env[contract.ENV_RUN_PATH],
                contract.ENV_API: sc.env[contract.ENV_API]})
    return env


def test_in_pod_save_flush_restore_through_the_sidecar(sidecars, store, tmp_path, cli):
    sc = sidecars({}).start()
    out = run_script(["pod"], app_env(sc), tmp_path)
    assert out["path"] == sc.run and out["id"] == "run-1" and out["before"] == []
    files = store.files()
    assert {"results/epoch-0.csv", "results/epoch-1.csv", "results/epoch-2.csv"} <= set(files)
    assert "notes.txt" not in files                        # end: only at the end
    for name in ("results/epoch-0.csv", "results/epoch-2.csv"):  # flush returned: readable now
        assert store.read(files[name].key) == (sc.run_dir / name).read_bytes()
    assert isinstance(out["seq"], int) and out["seq"] <= store.latest().seq

    # restore: a file of this run, deleted locally; a file of another run of the namespace.
    other = tmp_path / "pretrain"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"pretrained" * 10)
    assert cli("sync", str(other), "--run", "team-a/base/pretrain").returncode == 0
    (sc.run_dir / "results/epoch-1.csv").unlink()
    check = textwrap.dedent('''
        import runsync, sys
        f = runsync.restore("results/epoch-1.csv")
        g = runsync.restore("weights.bin", run_path="base/pretrain")
        print(f.name, f.read(), g.read()[:10])
        try:
            runsync.restore("no/such.file")
        except FileNotFoundError as err:
            print("missing:", err)
        try:
            runsync.restore("weights.bin", run_path="team-b/base/pretrain")
        except ValueError as err:
            print("other namespace:", err)
    ''')
    result = subprocess.run([sys.executable, "-c", check], env=app_env(sc), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{sc.run_dir / 'results/epoch-1.csv'} b'epoch,1\\n' b'pretrained'"
    assert lines[1].startswith("missing: 'no/such.file' is not among the committed files of team-a/proj/run-1")
    assert "another namespace" in lines[2]
    code, _ = sc.terminate()
    assert code == 0 and "notes.txt" in store.files()


def test_embedded_mode_leaves_the_same_objects(tmp_path, s3_env, sidecars, store):
    sc = sidecars({}).start()
    run_script(["pod"], app_env(sc), tmp_path)
    assert sc.terminate()[0] == 0
    in_pod = {n: ident_of(e) for n, e in store.files().items()}

    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSYNC_")}
    env.update(s3_env)
    out = run_script(["embedded", str(tmp_path / "laptop"), "team-a/proj/laptop-run", s3_env["RUNSYNC_STORE"]],
                     env, tmp_path)
    assert out["path"] == "team-a/proj/laptop-run"
    laptop = Store(s3_env, run="team-a/proj/laptop-run")
    final = laptop.latest()
    assert final.final, "the embedded engine was not flushed at exit"
    assert {n: ident_of(e) for n, e in final.files.items()} == in_pod


def test_save_outside_the_run_dir(sidecars, store, tmp_path):
    sc = sidecars({}).start()
    outside = tmp_path / "elsewhere"
    (outside / "cfg").mkdir(parents=True)
    (outside / "cfg/model.yaml").write_text("layers: 12")
    script = textwrap.dedent(f'''
        import runsync
        print(runsync.save({str(outside / "cfg/*.yaml")!r}, base_path={str(outside)!r}, policy="now"))
        runsync.flush()
        for policy in ("live", "end"):
            try:
                runsync.save({str(outside / "cfg/*.yaml")!r}, policy=policy)
            except ValueError as err:
                print(policy, "refused:", err)
    ''')
    result = subprocess.run([sys.executable, "-c", script], env=app_env(sc), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['cfg/model.yaml']"
    assert store.read(store.files()["cfg/model.yaml"].key) == b"layers: 12"
    assert lines[1].startswith("live refused:") and "outside the run dir" in lines[1] and "policy='now'" in lines[1]
    assert lines[2].startswith("end refused:")


def test_code_state_round_trip(tmp_path, s3_env):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("lr = 0.1\n")
    (repo / ".gitignore").write_text("secrets.env\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    (repo / "train.py").write_text("lr = 0.05  # tuned, not committed\n")
    (repo / "secrets.env").write_text("TOKEN=hunter2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSYNC_")}
    env.update(s3_env)
    script = f"import runsync; runsync.init(dir={str(tmp_path / 'run')!r}, run='team-a/proj/coded', store={s3_env['RUNSYNC_STORE']!r}); runsync.flush()"
    assert subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, timeout=60).returncode == 0

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    result = subprocess.run([str(Path(sys.executable).with_name("runsync")), "restore", "team-a/proj/coded", "--code"],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "runsync/coded" in result.stdout
    head = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=clone, capture_output=True, text=True)
    assert head.stdout.strip() == "runsync/coded"
    assert (clone / "train.py").read_text() == "lr = 0.05  # tuned, not committed\n"
    assert not (clone / "secrets.env").exists()
    store_keys = Store(s3_env, run="team-a/proj/coded")
    diff = store_keys.read(store_keys.layout.code_key("diff.patch")).decode()
    assert "hunter2" not in diff and "lr = 0.05" in diff

    none = subprocess.run([str(Path(sys.executable).with_name("runsync")), "restore", "team-a/proj/never", "--code"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 1
    assert "recorded no code state" in none.stderr


def test_restore_of_a_file_the_trainer_deleted(sidecars, store, tmp_path, cli):
    """W&B restores whatever was saved: a deletion the sidecar committed does not make a file
    unrestorable; the newest committed version comes back, with the manifest it came from."""
    sc = sidecars({}).start()
    run_script(["pod"], app_env(sc), tmp_path)
    kept = store.latest().seq
    (sc.run_dir / "results/epoch-1.csv").unlink()
    # Deterministic: only once the deletion is committed (the case that failed under load).
    wait_for(lambda: "results/epoch-1.csv" not in store.files() and store.latest().seq > kept,
             timeout=60, what="the deletion of results/epoch-1.csv to be committed")
    # The CLI first: the SDK's restore puts the file back in the run dir, and the sidecar saves it again.
    out = cli("restore", sc.run, "results/epoch-1.csv", "--to", str(tmp_path / "laptop"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "laptop/results/epoch-1.csv").read_bytes() == b"epoch,1\n"
    assert not (tmp_path / "laptop/results/epoch-0.csv").exists()
    assert f"from manifest {kept}" in out.stdout, out.stdout
    check = textwrap.dedent('''
        import runsync
        f = runsync.restore("results/epoch-1.csv")
        print(f.name, f.read())
    ''')
    result = subprocess.run([sys.executable, "-c", check], env=app_env(sc), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{sc.run_dir / 'results/epoch-1.csv'} b'epoch,1\\n'"
    assert f"from manifest {kept}" in result.stderr, result.stderr

    assert sc.terminate()[0] == 0


def test_finish_right_after_init_commits_what_was_written(tmp_path, s3_env):
    """Embedded: init, one file, finish at once. finish waits for the store to be read, uploads,
    commits the final manifest; it raises when it cannot (here: a bucket that does not exist)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSYNC_")}
    env.update(s3_env)
    script = textwrap.dedent('''
        import sys, runsync
        run = runsync.init(dir=sys.argv[1], run="team-a/proj/quick", store=sys.argv[2], code=False)
        with open(run.dir + "/result.json", "w") as f:
            f.write("{}")
        runsync.finish()
        print("finished")
    ''')
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "quick"), s3_env["RUNSYNC_STORE"]],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "finished"
    final = Store(s3_env, run="team-a/proj/quick").latest()
    assert final is not None and final.final, result.stderr
    assert sorted(final.files) == ["result.json"]

    missing = "s3://no-such-bucket-" + os.urandom(4).hex() + "/runs"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "nowhere"), missing],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0 and "finished" not in result.stdout
    assert "no-such-bucket" in result.stderr, result.stderr



def test_embedded_flush_takes_one_fence_however_long_it_waits(tmp_path, s3_env, monkeypatch):
    """Embedded: a flush waits for what was written before it was called: it asks the watcher
    for one fence (a `.runsync/fence-N` file) and waits on it, however many times it checks the
    store meanwhile; a fence per check would make it wait for what the trainer wrote later."""
    import threading

    import inotify_simple

    import runsync
    from runsync import embedded, sdk

    monkeypatch.setattr(embedded, "CHECK_EVERY", 0.3)  # many store checks in one flush
    checks = []
    check_store = embedded.check_store
    monkeypatch.setattr(embedded, "check_store", lambda *a: (checks.append(1), check_store(*a)))
    run_dir = tmp_path / "run"
    (run_dir / ".runsync").mkdir(parents=True)
    stop = threading.Event()

    def keep_writing() -> None:  # a log the trainer writes and never closes while it runs
        with open(run_dir / "a.log", "w") as f:
            while not stop.wait(0.05):
                f.write("step\n")
                f.flush()
    writer = threading.Thread(target=keep_writing)
    writer.start()
    fences = inotify_simple.INotify()
    fences.add_watch(str(run_dir / ".runsync"), inotify_simple.flags.CREATE)
    try:
        runsync.init(dir=str(run_dir), run="team-a/proj/busy", store=s3_env["RUNSYNC_STORE"], code=False)
        checks.clear()  # init's own check
        # the start-up rescan saw a.log changing: a flush now waits until it is complete
        wait_for(lambda: "a.log" in str(sdk._backend().core.ask("status", {})["pending"]), what="a.log pending")
        result = {}

        def flush():
            try:
                result.update(seq=runsync.flush(timeout=120))
            except Exception as err:  # noqa: BLE001 - shown by the assertion below
                result.update(err=err)
        flusher = threading.Thread(target=flush)
        flusher.start()
        wait_for(lambda: len(checks) >= 3 or result, timeout=60, what="three store checks in one flush")
        assert not result, result
        stop.set()  # a.log complete: all the flush waited for
        flusher.join(150)
        assert "seq" in result, result  # durable: no TimeoutError
        created = [e.name for e in fences.read(timeout=0) if e.name.startswith("fence-")]
        assert len(created) == 1, f"one flush asked for {len(created)} fences: {created}"
    finally:
        stop.set()
        writer.join()
        fences.close()
        runsync.finish()
