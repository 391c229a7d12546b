"""`watch.scan`: what `runsync sync` and the sidecar's rescan see of a run dir, held compactly
(one string and three arrays, issue 17's idle RSS) but read as the sorted `LocalFile`s it stands for."""

import os

import pytest

from runsync import watch


def test_a_scan_lists_every_regular_file_sorted_by_path_with_its_stat(tmp_path):
    names = ["b.txt", "a/z.bin", "a/ü-é.txt", "a.txt", "ckpt/step-10/model.pt", "ckpt/step-9/model.pt"]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * i)
    (tmp_path / ".runsync").mkdir()
    (tmp_path / ".runsync" / "durable.sqlite").write_bytes(b"state")  # runsync's own, never listed
    os.symlink(tmp_path / "b.txt", tmp_path / "link.txt")

    found = watch.scan(tmp_path)

    assert [f.relpath for f in found.files] == sorted(names)
    assert found.symlinks == ("link.txt",)
    for f in found.files:
        st = os.lstat(tmp_path / f.relpath)
        assert (f.path, f.size, f.mtime_ns) == (str(tmp_path / f.relpath), st.st_size, st.st_mtime_ns)
    assert len(found.files) == len(names)
    assert found.files[-1] == found.files[len(names) - 1] == list(found.files)[-1]
    assert found.files[1:3] == tuple(list(found.files)[1:3])
    with pytest.raises(IndexError):
        found.files[len(names)]


def test_an_empty_run_dir_scans_to_nothing(tmp_path):
    found = watch.scan(tmp_path)
    assert (len(found.files), list(found.files), found.files[0:5]) == (0, [], ())


def test_a_scan_passes_over_the_files_it_is_told_are_checked_in_any_order_of_names(tmp_path):
    """The names taken as checked come in sorted order (the index's) and are merged with the
    walk as it goes: that works only if the walk meets files in the same order, so names where
    a directory's "/" sorts between siblings' characters ("a-b/x" < "a.txt" < "a/b" < "a0")."""
    names = ["a+", "a-b/x", "a.txt", "a/b-c", "a/b.txt", "a/b/c", "a0", "b/c/d/e", "é/x", "z"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    checked = ["a-b/x", "a/b-c", "a/b/c", "a0", "é/x", "gone.bin"]  # gone.bin: named, not here

    found = watch.scan(tmp_path, iter(sorted(checked)))

    assert [f.relpath for f in found.files] == sorted(set(names) - set(checked))
    assert found.taken == 5
