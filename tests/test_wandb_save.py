"""W&B conformance of `save()` (issue 16): W&B's own save and policy tests, ported row by row.

Sources (wandb/wandb@b6e2950): tests/unit_tests/test_wandb_save.py (`unit`),
tests/system_tests/test_core/test_wandb_save.py (`system`),
tests/system_tests/test_core/test_save_policies.py (`policies`), the policy parts of
tests/unit_tests/test_dir_watcher.py (`dir_watcher`), and the examples of `Run.save`'s
docstring (wandb/sdk/wandb_run.py). Each row either behaves as W&B does or is a DEPARTURE,
asserted as runsync's documented behaviour (docs/conformance/save.md gives the reasons).

Everything runs for real: the SDK's embedded engine (`runsync.init(dir, run, store)`) against
SeaweedFS, the sidecar as a process for the in-pod API, and `runsync sync` as a command.
A row checks what a user would: the names `save()` returns, what is in the run dir, and what the
store holds (the committed manifest and every object uploaded for a name).
"""

from __future__ import annotations

import ast
import glob as globmod
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import runsync
from harness import Store
from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

RUN = "team-a/wb/run-1"


class Embedded:
    """A laptop run: cwd `tmp/work`, run dir `tmp/run`, the engine in this process."""

    def __init__(self, tmp: Path, s3_env: dict[str, str]):
        self.tmp = tmp
        self.run_dir = tmp / "run"
        self.store = Store(s3_env, run=RUN)
        runsync.init(dir=str(self.run_dir), run=RUN, store=s3_env["RUNSYNC_STORE"], code=False)
        self.open = True

    def path(self, text: str) -> str:
        return text.format(tmp=self.tmp, run=self.run_dir)

    def finish(self) -> None:
        if self.open:
            self.open = False
            runsync.finish()

    def uploaded(self, name: str) -> set[bytes]:
        """The content of every version of `name` committed (format-2 keys hold no name: the
        manifests say which object is which)."""
        keys_ = {m.files[name].key for m in self.store.manifests() if name in m.files}
        return {self.store.read(k) for k in keys_}

    def committed(self) -> dict[str, bytes]:
        return {n: self.store.read(e.key) for n, e in self.store.files().items()}


@pytest.fixture
def laptop(tmp_path, s3_env, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    run = Embedded(tmp_path, s3_env)
    yield run
    run.finish()


def make(root: Path, files) -> None:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}")


# ------------------------------------------------------------------ names: which files, under which names

ERR_STAR = r"may not start with '\*'"
ERR_ABOVE = "may not walk above the base path"
ERR_OUTSIDE = "outside the run dir"

# (files under tmp, args, kwargs, names saved, error, warning). `{tmp}` and `{run}` are the test's
# dirs; cwd is `{tmp}/work`. Outside the run dir runsync copies a file in once (`policy="now"`):
# W&B's default `live` there is the departure of the `copy_fallback_live` row.
NAMING = [
    # unit: test_save_glob_metacharacters_not_matched_by_default (+ test_save_glob_true_warns_...)
    pytest.param(["work/myfile[1].txt"], ["myfile[1].txt"], {"policy": "now"}, [], None, "glob=False",
                 id="glob_metacharacters_not_matched_by_default"),
    # unit: test_save_glob_escape_matches_literal_path
    pytest.param(["work/myfile[1].txt"], [globmod.escape("myfile[1].txt")], {"policy": "now"}, ["myfile[1].txt"],
                 None, None, id="glob_escape_matches_literal_path"),
    # unit: test_save_glob_false_treats_path_as_literal
    pytest.param(["work/myfile[1].txt"], ["myfile[1].txt"], {"policy": "now", "glob": False}, ["myfile[1].txt"],
                 None, None, id="glob_false_treats_path_as_literal"),
    # unit: test_save_glob_false_does_not_expand_wildcards
    pytest.param(["work/test.rad", "work/foo.rad"], ["*.rad"], {"policy": "now", "glob": False}, [], None, "glob=True",
                 id="glob_false_does_not_expand_wildcards"),
    # unit: test_save_glob_false_warns_when_metacharacters_and_no_literal_match
    pytest.param([], ["myfiles/*.txt"], {"policy": "now", "glob": False}, [], None, "glob=True",
                 id="glob_false_warns_when_no_literal_match"),
    # unit: test_save_glob_true_warns_when_metacharacters_and_no_glob_match
    pytest.param(["work/test[1].txt"], ["test[1].txt"], {"policy": "now", "glob": True}, [], None, "glob=False",
                 id="glob_true_warns_when_no_glob_match"),
    # unit: test_save_relative_path
    pytest.param(["work/test.rad"], ["test.rad"], {"policy": "now"}, ["test.rad"], None, None, id="relative_path"),
    # unit: test_save_relative_base_path (W&B's default live: see copy_fallback_live)
    pytest.param(["work/dir/subdir/file.txt"], ["dir/subdir/file.txt"], {"base_path": "dir", "policy": "now"},
                 ["subdir/file.txt"], None, None, id="relative_base_path"),
    # unit: test_save_relative_path_glob_files
    pytest.param(["work/test.rad", "work/foo.rad"], ["*.rad"], {"policy": "now"}, ["foo.rad", "test.rad"], None,
                 None, id="relative_path_glob_files"),
    # issue 16: a relative glob keeps its path relative to the cwd (W&B: base_path defaults to ".")
    pytest.param(["work/results/eval/acc.json"], ["results/eval/*"], {"policy": "now"},
                 ["results/eval/acc.json"], None, None, id="relative_glob_keeps_cwd_relative_path"),
    # unit: test_save_valid_absolute_glob (one directory level kept)
    pytest.param(["dir/globbed/subdir/test.txt"], ["{tmp}/dir/*/subdir/*.txt"], {"policy": "now"},
                 ["subdir/test.txt"], None, None, id="valid_absolute_glob"),
    # unit: test_save_valid_absolute_glob_base_path
    pytest.param(["dir/x/file.txt", "dir/y/file.txt"], ["{tmp}/dir/*/file.txt"],
                 {"base_path": "{tmp}", "policy": "now"}, ["dir/x/file.txt", "dir/y/file.txt"], None, None,
                 id="valid_absolute_glob_base_path"),
    # unit: test_save_file_in_run_dir
    pytest.param(["run/my_file.txt"], ["{run}/my_file.txt"], {"base_path": "{run}"}, ["my_file.txt"], None, None,
                 id="file_in_run_dir"),
    # unit: test_save_base_path_glob_first_directory_invalid
    pytest.param([], ["dir/*/file.txt"], {"base_path": "dir"}, None, ERR_STAR, None,
                 id="base_path_glob_first_directory_invalid"),
    # unit: test_save_glob_first_directory_invalid
    pytest.param([], ["*/file.txt"], {}, None, ERR_STAR, None, id="glob_first_directory_invalid"),
    # unit: test_save_absolute_glob_first_directory_invalid
    pytest.param([], ["{tmp}/*/file.txt"], {"base_path": "{tmp}"}, None, ERR_STAR, None,
                 id="absolute_glob_first_directory_invalid"),
    # unit: test_save_absolute_glob_last_directory_invalid
    pytest.param([], ["{tmp}/*/file.txt"], {}, None, ERR_STAR, None, id="absolute_glob_last_directory_invalid"),
    # unit: test_save_dotdot
    pytest.param(["subdir/nvm.txt"], ["{tmp}/subdir/and_more/../nvm.txt"], {"policy": "now"}, ["subdir/nvm.txt"],
                 None, None, id="dotdot"),
    # unit: test_save_cannot_escape_base_path (issue 16: was stored under its basename)
    pytest.param(["file.txt"], ["{tmp}/work/../file.txt"], {"base_path": "{tmp}/work", "policy": "now"}, None,
                 ERR_ABOVE, None, id="cannot_escape_base_path"),
    # unit: test_save_bytes_glob
    pytest.param(["work/my_file.txt"], [b"my_file.txt"], {"policy": "now"}, ["my_file.txt"], None, None,
                 id="bytes_glob"),
    # unit: test_save_g3_path_warns
    pytest.param([], ["gs://file.txt"], {}, [], None, "cloud storage url, can't save", id="gs_path_warns"),
    # unit: test_save_s3_path_warns
    pytest.param([], ["s3://file.txt"], {}, [], None, "cloud storage url, can't save", id="s3_path_warns"),
    # unit: test_save_hardlink_fallback_when_symlink_fails (runsync always copies; same names)
    pytest.param(["hl_src/a.hl", "hl_src/b.hl"], ["{tmp}/hl_src/*.hl"], {"base_path": "{tmp}/hl_src", "policy": "now"},
                 ["a.hl", "b.hl"], None, None, id="hardlink_fallback_names"),
    # unit: test_save_copy_fallback_when_links_unavailable. DEPARTURE: W&B copies and downgrades
    # live to now with a warning; runsync refuses live (and end) outside the run dir.
    pytest.param(["cp_src/a.cpy"], ["{tmp}/cp_src/*.cpy"], {"base_path": "{tmp}/cp_src", "policy": "live"}, None,
                 ERR_OUTSIDE, None, id="DEPARTURE_copy_fallback_live"),
    # system: test_uploads_at_end. DEPARTURE: `end` of a file outside the run dir is refused
    # (the sidecar cannot see it at the end); the same name with policy="now" is saved.
    pytest.param(["my_test_dir/my_test_file.txt"], ["{tmp}/my_test_dir/my_test_file.txt"], {"policy": "end"}, None,
                 ERR_OUTSIDE, None, id="DEPARTURE_uploads_at_end_outside"),
    pytest.param(["my_test_dir/my_test_file.txt"], ["{tmp}/my_test_dir/my_test_file.txt"], {"policy": "now"},
                 ["my_test_dir/my_test_file.txt"], None, None, id="uploads_at_end_name"),
    # wandb_run.py, Run.save's docstring examples
    pytest.param(["work/these/are/myfiles/a"], ["these/are/myfiles/*"], {"policy": "now"},
                 ["these/are/myfiles/a"], None, None, id="doc_relative_glob"),
    pytest.param(["work/these/are/myfiles/a"], ["these/are/myfiles/*"], {"base_path": "these", "policy": "now"},
                 ["are/myfiles/a"], None, None, id="doc_relative_glob_base_path"),
    pytest.param(["Users/me/run123/a.txt"], ["{tmp}/Users/me/run123/*.txt"], {"policy": "now"},
                 ["run123/a.txt"], None, None, id="doc_absolute_glob"),
    pytest.param(["Users/me/run123/a.txt"], ["{tmp}/Users/me/run123/*.txt"],
                 {"base_path": "{tmp}/Users", "policy": "now"}, ["me/run123/a.txt"], None, None,
                 id="doc_absolute_glob_base_path"),
    pytest.param(["work/files/a/saveme.txt", "work/files/b/saveme.txt"], ["files/*/saveme.txt"], {"policy": "now"},
                 ["files/a/saveme.txt", "files/b/saveme.txt"], None, None, id="doc_glob_in_subdirectories"),
    # DEPARTURE: a file in the run dir keeps its path relative to the run dir, also when given
    # absolute without base_path (W&B would keep one directory level: `run/ckpt/a.pt`).
    pytest.param(["run/ckpt/a.pt"], ["{run}/ckpt/*.pt"], {}, ["ckpt/a.pt"], None, None,
                 id="DEPARTURE_absolute_glob_in_run_dir"),
]


@pytest.mark.parametrize("files, args, kwargs, names, error, warning", NAMING)
def test_save_names(laptop, capsys, files, args, kwargs, names, error, warning):
    make(laptop.tmp, files)
    args = [laptop.path(a) if isinstance(a, str) else a for a in args]
    kwargs = {k: laptop.path(v) if isinstance(v, str) and k == "base_path" else v for k, v in kwargs.items()}
    if error:
        with pytest.raises(ValueError, match=error):
            runsync.save(*args, **kwargs)
        laptop.finish()
        assert laptop.committed() == {}
        return
    returned = runsync.save(*args, **kwargs)
    stderr = capsys.readouterr().err
    if warning:
        assert warning in stderr
    else:
        assert "runsync:" not in stderr, stderr
    assert sorted(returned) == names
    laptop.finish()
    committed = laptop.committed()
    assert set(committed) == set(names)
    for name in names:
        assert (laptop.run_dir / name).is_file() and not (laptop.run_dir / name).is_symlink()
        assert committed[name] == (laptop.run_dir / name).read_bytes()


def test_save_glob_false_file_stays_saved_after_its_source_is_gone(laptop):
    # unit: test_save_glob_false_treats_path_as_literal, second part: the source deleted, save()
    # again; W&B still publishes the copy in its run dir. runsync: the copy stays saved.
    make(laptop.tmp, ["work/myfile[1].txt"])
    assert runsync.save("myfile[1].txt", policy="now", glob=False) == ["myfile[1].txt"]
    (laptop.tmp / "work/myfile[1].txt").unlink()
    runsync.save("myfile[1].txt", policy="now", glob=False)
    laptop.finish()
    assert laptop.committed() == {"myfile[1].txt": b"content of work/myfile[1].txt"}


# ------------------------------------------------------------------ policies

def write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(data)
    tmp.replace(path)  # complete when renamed into place


# Steps on `f` = run_dir/my-file.txt: ("write", text), ("save", policy), ("flush",), ("check", set of
# versions uploaded so far), then the run ends: `uploaded` is every version ever sent (None: not
# checked), `final` the committed content at the end (None: not in the final manifest).
POLICIES = [
    # dir_watcher: test_dirwatcher_update_policy_live_calls_file_changed_iff_file_nonempty[content]
    pytest.param([("write", "content"), ("save", "live"), ("flush",), ("check", {"content"})], {"content"}, "content",
                 id="live_nonempty_file_uploaded"),
    # dir_watcher: ...iff_file_nonempty[empty]; policies: test_policy_on_modified ("does not save
    # empty files"). DEPARTURE: an empty file is a file (a marker, an __init__.py): uploaded.
    pytest.param([("write", ""), ("save", "live"), ("flush",), ("check", {""})], {""}, "",
                 id="DEPARTURE_live_empty_file_uploaded"),
    # dir_watcher: ...iff_file_nonempty[missing]
    pytest.param([("save", "live"), ("flush",), ("check", set())], set(), None, id="live_missing_file_nothing"),
    # dir_watcher: test_dirwatcher_update_policy_on_nonexistent_file_..._iff_policy_now_or_live[now|live|end]
    pytest.param([("save", "now"), ("write", "content"), ("flush",), ("check", {"content"})], {"content"}, "content",
                 id="now_before_file_exists"),
    pytest.param([("save", "live"), ("write", "content"), ("flush",), ("check", {"content"})], {"content"}, "content",
                 id="live_before_file_exists"),
    pytest.param([("save", "end"), ("write", "content"), ("flush",), ("check", set())], {"content"}, "content",
                 id="end_before_file_exists"),
    # dir_watcher: test_dirwatcher_finish_uploads_unheardof_files
    pytest.param([("write", "content"), ("flush",), ("check", set())], {"content"}, "content",
                 id="finish_uploads_unheardof_files"),
    # dir_watcher: test_dirwatcher_finish_skips_now_files
    pytest.param([("save", "now"), ("write", "content"), ("flush",), ("write", "later"), ("flush",)], {"content"},
                 "content", id="finish_skips_now_files"),
    # dir_watcher: test_dirwatcher_finish_uploads_end_files
    pytest.param([("write", "content"), ("save", "end"), ("flush",), ("check", set())], {"content"}, "content",
                 id="finish_uploads_end_files"),
    # dir_watcher: test_dirwatcher_finish_uploads_live_files_iff_changed[True|False]
    pytest.param([("write", "content"), ("save", "live"), ("flush",), ("write", "new content")],
                 {"content", "new content"}, "new content", id="finish_uploads_live_files_if_changed"),
    pytest.param([("write", "content"), ("save", "live"), ("flush",)], {"content"}, "content",
                 id="finish_skips_live_files_unchanged"),
    # dir_watcher: test_policylive_uploads_nonempty_unchanged_file_on_modified
    pytest.param([("write", "content"), ("save", "live"), ("flush",), ("check", {"content"})], {"content"}, "content",
                 id="policylive_uploads_nonempty_file"),
    # dir_watcher: test_policylive_ratelimits_modified_file_reupload; policies:
    # test_policy_on_modified_rate_limited, test_policy_on_modified_size_rate_limited. DEPARTURE:
    # no rate limit: every complete version of a live file goes (bursts coalesce while one uploads).
    pytest.param([("write", "content"), ("save", "live"), ("flush",), ("write", "new content"), ("flush",),
                  ("check", {"content", "new content"})], {"content", "new content"}, "new content",
                 id="DEPARTURE_live_not_rate_limited"),
    pytest.param([("write", "a" * 10), ("save", "live"), ("flush",), ("write", "a" * 11), ("flush",),
                  ("check", {"a" * 10, "a" * 11})], {"a" * 10, "a" * 11}, "a" * 11,
                 id="DEPARTURE_live_not_size_rate_limited"),
    # dir_watcher: test_policylive_forceuploads_on_finish
    # (whether "content" went too depends on timing: versions coalesce while one uploads)
    pytest.param([("write", "content"), ("save", "live"), ("write", "new content")], None,
                 "new content", id="policylive_final_version_on_finish"),
    # dir_watcher: test_policynow_uploads_on_modified_iff_not_already_uploaded
    pytest.param([("write", "content"), ("save", "now"), ("flush",), ("write", "changed"), ("flush",),
                  ("check", {"content"})], {"content"}, "content", id="policynow_not_again_on_change"),
    # dir_watcher.DirWatcher.update_policy: save() forces what it names (`on_modified(force=True)`);
    # issue 16: a `now` file saved again after it changed is uploaded again.
    pytest.param([("write", "v1"), ("save", "now"), ("flush",), ("write", "v2"), ("save", "now"), ("flush",),
                  ("check", {"v1", "v2"})], {"v1", "v2"}, "v2", id="now_saved_again_uploads_new_version"),
]


@pytest.mark.parametrize("steps, uploaded, final", POLICIES)
def test_save_policies(laptop, steps, uploaded, final):
    f = laptop.run_dir / "my-file.txt"
    for step in steps:
        if step[0] == "write":
            write(f, step[1])
        elif step[0] == "save":
            runsync.save(str(f), base_path=str(laptop.run_dir), policy=step[1])
        elif step[0] == "flush":
            runsync.flush(timeout=60)
        elif step[0] == "check":
            assert {v.decode() for v in laptop.uploaded("my-file.txt")} == step[1]
    laptop.finish()
    if uploaded is not None:
        assert {v.decode() for v in laptop.uploaded("my-file.txt")} == uploaded
    committed = laptop.committed()
    assert (committed["my-file.txt"].decode() if "my-file.txt" in committed else None) == final


def test_live_policy_is_recorded(laptop):
    # policies: test_live_policy_policy: the file's policy is live (runsync: in the manifest).
    write(laptop.run_dir / "test_file", "x")
    runsync.save(str(laptop.run_dir / "test_file"), base_path=str(laptop.run_dir))
    laptop.finish()
    assert laptop.store.files()["test_file"].policy == "live"


def test_now_outside_run_dir_saved_again_after_change(laptop):
    # issue 16 (W&B links or copies the file into its run dir on every save() and forces it):
    # the run dir's copy and the store agree on the newest version.
    src = laptop.tmp / "work" / "eval.json"
    src.write_text("v1")
    assert runsync.save("eval.json", policy="now") == ["eval.json"]
    runsync.flush(timeout=60)
    src.write_text("v2")
    assert runsync.save("eval.json", policy="now") == ["eval.json"]
    runsync.flush(timeout=60)
    assert (laptop.run_dir / "eval.json").read_text() == "v2"
    assert laptop.committed()["eval.json"] == b"v2"
    laptop.finish()
    assert {v.decode() for v in laptop.uploaded("eval.json")} == {"v1", "v2"}


# ------------------------------------------------------------------ through `runsync sync --save`

# (files, --save, stored name → policy): the annotations' syntax names files as save() does.
SYNC_NAMING = [
    # unit: test_save_relative_base_path
    pytest.param(["dir/subdir/file.txt"], "- {glob: dir/subdir/file.txt, base_path: dir}", {"subdir/file.txt": "live"},
                 id="relative_base_path"),
    # unit: test_save_glob_escape_matches_literal_path (myfile1.txt goes at the end, named by no rule)
    pytest.param(["myfile[1].txt", "myfile1.txt"], globmod.escape("myfile[1].txt") + ":now",
                 {"myfile[1].txt": "now", "myfile1.txt": "end"}, id="glob_escape_matches_literal_path"),
    # unit: test_save_glob_metacharacters_not_matched_by_default
    pytest.param(["myfile[1].txt", "myfile1.txt"], "myfile[1].txt:now", {"myfile[1].txt": "end", "myfile1.txt": "now"},
                 id="glob_metacharacters_not_matched_by_default"),
]


@pytest.mark.parametrize("files, save, stored", SYNC_NAMING)
def test_sync_save_names(cli, tmp_path, files, save, stored):
    make(tmp_path / "run", files)
    result = cli("sync", str(tmp_path / "run"), "--run", RUN, "--save", save)
    assert result.returncode == 0, result.stderr
    listed = cli("ls", RUN, "--json")
    assert {row["name"]: row["policy"] for row in json.loads(listed.stdout)} == stored


# ------------------------------------------------------------------ ignore globs, through `runsync sync`

# dir_watcher: test_dirwatcher_finish_skips_ignoreglob_files[True|False]
@pytest.mark.parametrize("ignore, uploaded", [pytest.param(["--ignore", "*.txt"], [], id="ignored"),
                                              pytest.param([], ["my-file.txt"], id="not_ignored")])
def test_sync_end_file_skips_ignore_globs(cli, tmp_path, ignore, uploaded):
    (tmp_path / "my-file.txt").write_text("content")
    result = cli("sync", str(tmp_path), "--run", RUN, "--save", "my-file.txt:end", *ignore, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["uploaded"] == uploaded


# ------------------------------------------------------------------ long names (issue 16, then 17)

LONG = "n" * 240 + ".pt"  # a 243-byte file name: format 1's `name~hash` key segment (260 bytes) was
# too long for SeaweedFS; format-2 keys hold no name, so it is saved like any other (issue 17).


def test_save_keeps_a_long_name(laptop):
    write(laptop.run_dir / "ckpt" / LONG, "weights")
    runsync.save(str(laptop.run_dir / "ckpt" / "*.pt"), base_path=str(laptop.run_dir), policy="now")
    (laptop.tmp / "work" / LONG).write_text("copied")
    runsync.save(LONG, policy="now")
    laptop.finish()
    assert laptop.committed() == {f"ckpt/{LONG}": b"weights", LONG: b"copied"}


def test_sync_uploads_a_long_name(cli, tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / LONG).write_text("a long name")
    result = cli("sync", str(tmp_path), "--run", RUN, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uploaded 2 files" in result.stdout
    listed = cli("ls", RUN, "--json")
    assert sorted(row["name"] for row in json.loads(listed.stdout)) == sorted([LONG, "ok.txt"])


# ------------------------------------------------------------------ in a pod, through the sidecar's API

def app_env(sc) -> dict:
    """What the operator gives an app container: the run dir, the run path, the API; no keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update({k: sc.env[k] for k in (contract.ENV_DIR, contract.ENV_RUN_PATH, contract.ENV_API)})
    return env


def test_in_pod_now_saved_again_and_long_names(sidecars, store, tmp_path):
    """Items 2 and 3 through the sidecar: a `now` file saved again after a change goes again;
    a long name (243 bytes, too long for format 1's keys) is saved by save() and by the sidecar
    like any other."""
    sc = sidecars({"runsync.dev/save": "logs/**:live"}).start()
    script = textwrap.dedent(f'''
        import os, runsync
        from runsync import contract, sdk
        d = runsync.run.dir
        open(os.path.join(d, "eval.json"), "w").write("v1")
        print(runsync.save(os.path.join(d, "eval.json"), base_path=d, policy="now"))
        runsync.flush(timeout=60)
        open(os.path.join(d, "eval.json"), "w").write("v2")
        runsync.save(os.path.join(d, "eval.json"), base_path=d, policy="now")
        runsync.flush(timeout=60)
        os.makedirs(os.path.join(d, "logs"))
        open(os.path.join(d, "logs", {LONG!r}), "w").write("long")
        open(os.path.join(d, "logs", "ok.log"), "w").write("ok")
        runsync.flush(timeout=60)
        print(runsync.save(os.path.join(d, "logs", "*"), base_path=d, policy="now"))
        runsync.flush(timeout=60)
    ''')
    result = subprocess.run([sys.executable, "-c", script], env=app_env(sc), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['eval.json']"
    assert sorted(ast.literal_eval(lines[1])) == sorted([f"logs/{LONG}", "logs/ok.log"])
    files = store.files()
    assert store.read(files["eval.json"].key) == b"v2" and store.read(files["logs/ok.log"].key) == b"ok"
    assert store.read(files[f"logs/{LONG}"].key) == b"long"
    assert sc.terminate()[0] == 0
