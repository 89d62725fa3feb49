"""The output-path policy (``outputs.claim_outputs``): fault injection over the kinds of path an output may
not be, the inputs and other outputs it may not be, the lock, and the one file mode. Every "device" here
is made inside tmp_path (a FIFO, a socket, a symbolic link to one) or faked by monkeypatching ``os.stat``;
no test names a real device or system path as an output."""

import os
import socket
import stat

import h5py
import pytest

from held_lock import held_elsewhere
from mdlm_interp import outputs
from mdlm_interp.errors import UsageError
from mdlm_interp.outputs import OutputLock, claim_outputs, holder, lock_path, release_claims, staged_file


@pytest.fixture(autouse=True)
def _no_leftover_claims():
    yield
    release_claims()


def fifo(path):
    os.mkfifo(path)
    return path


def unix_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


def hdf5(path):
    with h5py.File(path, "w") as file:
        file.attrs["kind"] = "old"
    return path


def symlink_to(target_maker):
    def make(path):
        target = target_maker(path.with_name(path.name + ".target"))
        path.symlink_to(target)
        return path
    return make


def dangling(path):
    path.symlink_to(path.with_name("nowhere"))
    return path


def foreign_h5(path):
    path.write_text("notes, not HDF5")
    return path


def foreign_png(path):
    path.write_bytes(b"GIF89a")
    return path


REFUSED = [  # (name of the case, maker of the existing path, words of the message); all with --overwrite
    ("fifo", fifo, "a FIFO"),
    ("socket", unix_socket, "a socket"),
    ("symlink to a fifo", symlink_to(fifo), "a FIFO"),
    ("symlink to a socket", symlink_to(unix_socket), "a socket"),
    ("dangling symlink", dangling, "symbolic link to a missing path"),
    ("folder as a file", lambda p: (p.mkdir(), p)[1], "a folder, not a regular file"),
    ("not HDF5 under .h5", foreign_h5, "not an HDF5 file"),
]


@pytest.mark.parametrize("name,make,words", REFUSED, ids=[case[0] for case in REFUSED])
def test_an_output_that_is_no_regular_file_of_the_toolkit_is_refused_even_with_overwrite(tmp_path, name, make, words):
    path = make(tmp_path / "out.h5")
    before = os.lstat(path)
    with pytest.raises(UsageError, match=words):
        claim_outputs({"--out": path}, overwrite=True)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)  # untouched
    assert not lock_path(path).exists()


def test_a_png_output_must_be_a_png_to_be_replaced(tmp_path):
    with pytest.raises(UsageError, match="not a PNG file"):
        claim_outputs({"--figure": foreign_png(tmp_path / "f.png")}, overwrite=True)


def test_a_character_device_is_refused(tmp_path, monkeypatch):
    device = tmp_path / "tty0"
    device.write_bytes(b"")
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):  # the file looks like a character device, as /dev/null would
        result = real_stat(path, *args, **kwargs)
        if os.fspath(path) == os.fspath(device):
            return os.stat_result((stat.S_IFCHR | 0o666,) + tuple(result)[1:])
        return result

    monkeypatch.setattr(outputs.os, "stat", fake_stat)
    with pytest.raises(UsageError, match="a character device, not a regular file"):
        claim_outputs({"--trace": device}, overwrite=True)


def test_a_system_path_is_refused(tmp_path, monkeypatch):
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(outputs, "SYSTEM_ROOTS", (str(system),))
    with pytest.raises(UsageError, match="is a system path"):
        claim_outputs({"--out": system / "new.h5"})
    link = tmp_path / "innocent.h5"
    link.symlink_to(system / "target.h5")  # judged by where it leads
    with pytest.raises(UsageError, match="is a system path"):
        claim_outputs({"--out": link}, overwrite=True)
    assert list(system.iterdir()) == []


@pytest.mark.parametrize("text", ["", " ", ".", ".."])
def test_an_output_naming_no_file_is_refused(text):
    with pytest.raises(UsageError, match="names no file or folder"):
        claim_outputs({"--out": text}, overwrite=True)


def test_an_existing_file_needs_overwrite_and_then_only_a_toolkit_file(tmp_path):
    store = hdf5(tmp_path / "old.h5")
    with pytest.raises(UsageError, match="exists; pass --overwrite"):
        claim_outputs({"--out": store})
    claim = claim_outputs({"--out": store, "--csv": tmp_path / "new.csv"}, overwrite=True)
    assert claim.paths == {"--out": store, "--csv": tmp_path / "new.csv"}
    assert lock_path(store).exists() and lock_path(tmp_path / "new.csv").exists()
    claim.release()
    assert not lock_path(store).exists()


def test_an_output_that_is_an_input_is_refused(tmp_path):
    store = hdf5(tmp_path / "in.h5")
    os.link(store, tmp_path / "hard.h5")
    (tmp_path / "soft.h5").symlink_to(store)
    for alias in (store, tmp_path / "hard.h5", tmp_path / "soft.h5", tmp_path / "." / "in.h5"):
        with pytest.raises(UsageError, match="is one of the command's inputs"):
            claim_outputs({"--csv": alias}, [store], overwrite=True)
    assert h5py.File(store, "r").attrs["kind"] == "old"


def test_two_outputs_of_one_command_may_not_be_one_path(tmp_path):
    with pytest.raises(UsageError, match="--figure .* is also --out"):
        claim_outputs({"--out": tmp_path / "x", "--figure": tmp_path / "x"})
    with pytest.raises(UsageError, match="--figures .* is also --out"):
        claim_outputs({"--out": tmp_path / "x", "--figures": tmp_path / "sub" / ".." / "x"}, folders={"--figures"})
    assert list(tmp_path.iterdir()) == []


def test_an_output_another_process_writes_is_refused_and_nothing_is_locked(tmp_path):
    with held_elsewhere(tmp_path / "busy.h5", pid=4242):
        with pytest.raises(UsageError, match=r"being written by another process \(pid 4242\)"):
            claim_outputs({"--csv": tmp_path / "free.csv", "--out": tmp_path / "busy.h5"})
        assert holder(tmp_path / "free.csv") is None and not lock_path(tmp_path / "free.csv").exists()


def test_a_claim_nests_with_the_library_s_own_lock_and_a_folder_can_be_locked(tmp_path):
    folder = tmp_path / "adapter"
    claim = claim_outputs({"--out": folder}, folders={"--out"})
    assert holder(folder) is None  # this process's own lock does not count against itself
    with OutputLock(folder):  # the library locks again: nested, not refused
        pass
    assert lock_path(folder).exists()  # still held by the claim
    assert outputs.check_output_dir(folder) == folder
    claim.release()
    assert not lock_path(folder).exists()
    with held_elsewhere(folder):
        with pytest.raises(UsageError, match="being written by another process"):
            OutputLock(folder).acquire()
        with pytest.raises(UsageError, match="being written by another process"):
            claim_outputs({"--out": folder}, folders={"--out"})


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_files_are_written_with_one_mode_under_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with staged_file(tmp_path / "table.csv") as handle:
            handle.write("a,b\n")
        with outputs.staged_path(tmp_path / "store.h5") as temporary:
            hdf5(temporary)
        with outputs.staged_dir(tmp_path / "adapter") as folder:
            (folder / "sub").mkdir()
            fd = os.open(folder / "sub" / "weights", os.O_WRONLY | os.O_CREAT, 0o600)  # as mkstemp makes them
            os.close(fd)
            (folder / "config.json").write_text("{}")
    finally:
        os.umask(old)
    for name in ("table.csv", "store.h5", "adapter/sub/weights", "adapter/config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "store.h5", "table.csv"]  # no temporary left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    (tmp_path / "t.csv").write_text("old\n")
    with pytest.raises(RuntimeError):
        with staged_file(tmp_path / "t.csv") as handle:
            handle.write("new, half")
            raise RuntimeError("killed")
    assert (tmp_path / "t.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
