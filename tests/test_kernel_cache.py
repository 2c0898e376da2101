"""The compiled-kernel cache cannot be planted: kernels are built and loaded only in a folder only this user can write,
and a library is loaded only when its bytes are those recorded when it was built."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

import modeling_concept_talker.fast_thinker as fast_thinker


@pytest.fixture
def shared_tmp(tmp_path, monkeypatch):
    """A stand-in for the system's shared temporary folder, with the per-user cache unusable (a read-only home):
    the situation in which the kernel cache used to fall back to a predictable folder there."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    blocker = tmp_path / "home-cache"
    blocker.write_text("a file where the cache's parent folder should be")
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL_DIR", str(blocker / "kernels"))
    monkeypatch.setattr(fast_thinker.tempfile, "gettempdir", lambda: str(shared))
    monkeypatch.setattr(fast_thinker, "_native_state", {})
    return shared


@pytest.fixture
def loads(monkeypatch):
    """Every path ctypes is asked to load, instead of loading it."""
    calls = []

    def fake_load(path, *args, **kwargs):
        calls.append(str(path))
        raise OSError(f"not loaded in this test: {path}")

    monkeypatch.setattr(fast_thinker.ctypes, "CDLL", fake_load)
    return calls


def test_a_folder_planted_in_the_shared_temp_dir_is_never_used(shared_tmp, loads, tmp_path, caplog):
    """Another local user creates the cache's predictable names first, as links to a folder they control."""
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    for name in ("concept_talker_kernels", f"concept_talker_kernels-{os.getuid()}"):
        (shared_tmp / name).symlink_to(attacker, target_is_directory=True)
    with caplog.at_level("WARNING", logger=fast_thinker.__name__):
        lib, why = fast_thinker.load_native_kernel()
    assert lib is None and "only this user can write" in why
    assert not [path for path in loads if str(attacker) in os.path.realpath(path)]  # nothing of theirs was loaded
    assert not list(attacker.iterdir())  # nothing built there either
    assert "plain PyTorch instead" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_a_folder_owned_by_another_user_is_refused(shared_tmp):
    planted = shared_tmp / f"concept_talker_kernels-{os.getuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, 12345, 12345)
    assert fast_thinker.private_directory(str(planted)) is None
    with pytest.raises(fast_thinker.UntrustedKernelCache):
        fast_thinker.trusted_kernel_dir()


def test_the_fallback_is_made_private_and_atomically(shared_tmp):
    folder = fast_thinker.trusted_kernel_dir()
    assert folder == str(shared_tmp / f"concept_talker_kernels-{os.getuid()}")
    info = os.lstat(folder)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


def test_a_library_is_loaded_only_with_the_digest_recorded_at_its_build(tmp_path, loads):
    library = tmp_path / "fast_thinker_0123.so"
    library.write_bytes(b"\x7fELF the bytes the build wrote")
    assert fast_thinker.load_verified_library(str(library)) is None and not loads  # no digest recorded: not loaded
    fast_thinker.record_library_digest(str(library))
    with pytest.raises(OSError, match="not loaded in this test"):
        fast_thinker.load_verified_library(str(library))  # verified: handed to ctypes
    assert loads == [str(library)]
    library.write_bytes(b"\x7fELF bytes someone else put there")
    assert fast_thinker.load_verified_library(str(library)) is None and loads == [str(library)]  # changed: refused
    fast_thinker.record_library_digest(str(library))
    os.chmod(library, 0o666)  # writable by anyone: refused even with a matching digest
    assert fast_thinker.load_verified_library(str(library)) is None and len(loads) == 1


@pytest.mark.skipif("avx512f" not in fast_thinker._cpu_flags() or shutil.which("g++") is None,
                    reason="the native kernel needs an AVX-512 CPU and g++")
def test_a_tampered_cached_kernel_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setattr(fast_thinker, "_native_state", {})
    lib, why = fast_thinker.load_native_kernel()  # the user's cache (built once per machine, as the other tests use)
    assert lib is not None, why
    built_path = Path(lib._name)  # the loaded library's file
    kernels = tmp_path / "kernels"
    kernels.mkdir(mode=0o700)
    library = kernels / built_path.name
    shutil.copy(built_path, library)
    shutil.copy(f"{built_path}.sha256", f"{library}.sha256")
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL_DIR", str(kernels))
    built = library.read_bytes()
    changed = built[:-1] + bytes([built[-1] ^ 1])  # one bit changed after the build
    tampered = tmp_path / "tampered.so"  # a new file renamed over it: the loaded library's pages stay as they are
    tampered.write_bytes(changed)
    os.replace(tampered, library)
    monkeypatch.setattr(fast_thinker, "_native_state", {})
    lib, why = fast_thinker.load_native_kernel()
    assert lib is not None, why
    rebuilt = library.read_bytes()  # rebuilt, not loaded as found
    assert rebuilt != changed
    assert (kernels / f"{library.name}.sha256").read_text() == fast_thinker._digest(rebuilt)
