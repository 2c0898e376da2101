"""Where the native kernel comes from, and what happens when it cannot be had (`concept_talker_kernels.loader`).

- The cache directory is created private (0700); one that is group- or world-writable, owned by someone else or a
  symlink is refused, and nothing in it is built or loaded.
- A library is loaded only if its bytes match the SHA-256 recorded when it was built here, from a file this user
  owns and nobody else can write: a planted, foreign, corrupted or stale library is never loaded (a planted one
  whose constructor would leave a marker file leaves none) and is rebuilt.
- No compiler, a compile error, an untrusted cache or a CPU without the instructions: the fast runners run plain
  PyTorch, with one `KernelFallbackWarning`, never an exception (unless a kernel was asked for by name).

Builds in these tests are either expected to fail fast, or replaced by a copy of the genuine library built for
this machine (so no test pays for a full compilation beyond the first one per machine).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

import concept_talker_kernels as K
from concept_talker_kernels import loader
from configuration import load_preset
from modeling_concept_talker.fast_thinker import FastThinkerRunner


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees its own first warnings (the loader warns once per reason and process)."""
    monkeypatch.setattr(loader, "_warned", set())


@pytest.fixture
def isa():
    """The instruction set the trust tests build for: the most portable one this CPU runs."""
    isas = K.supported_isas()
    if not isas:
        pytest.skip(f"this CPU runs no native kernel ({K.describe_cpu()})")
    return isas[-1]


def _thinker():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(load_preset("tiny").thinker_config).eval()


def _fallbacks(record) -> list:
    return [w for w in record if issubclass(w.category, K.KernelFallbackWarning)]


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---- the cache directory ----------------------------------------------------------------------------------------
def test_cache_dir_is_created_private(tmp_path):
    path = K.trusted_cache_dir(str(tmp_path / "cache" / "kernels"))
    assert os.path.isdir(path) and _mode(path) == 0o700
    readable = tmp_path / "readable"
    readable.mkdir()
    os.chmod(readable, 0o755)  # ours, not writable by others: tightened, not refused
    assert K.trusted_cache_dir(str(readable)) == str(readable) and _mode(readable) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777])
def test_cache_dir_writable_by_others_is_refused(tmp_path, mode):
    shared = tmp_path / "kernels"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(K.UntrustedCacheDir, match="writable by others"):
        K.trusted_cache_dir(str(shared))
    assert _mode(shared) == mode  # left as it was


def test_cache_dir_of_another_user_is_refused(tmp_path, monkeypatch):
    foreign = tmp_path / "kernels"
    foreign.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)  # really another owner
    else:
        monkeypatch.setattr(loader, "_current_uid", lambda: os.geteuid() + 1)
    with pytest.raises(K.UntrustedCacheDir, match="belongs to uid"):
        K.trusted_cache_dir(str(foreign))


def test_symlinked_cache_dir_is_refused(tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    (tmp_path / "kernels").symlink_to(real)
    with pytest.raises(K.UntrustedCacheDir, match="symlink"):
        K.trusted_cache_dir(str(tmp_path / "kernels"))


def test_untrusted_cache_means_plain_pytorch_with_one_warning(tmp_path, monkeypatch, isa):
    shared = tmp_path / "kernels"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL_DIR", str(shared))
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL", isa)
    thinker = _thinker()
    with pytest.warns(K.KernelFallbackWarning) as record:
        runners = [FastThinkerRunner(thinker, max_length=16) for _ in range(2)]
    assert len(_fallbacks(record)) == 1 and "writable by others" in str(_fallbacks(record)[0].message)
    assert all(runner.kernel == "torch" for runner in runners)
    assert os.listdir(shared) == []  # nothing built or written there
    ids = torch.tensor([[1, 2, 3]])
    logits, _ = runners[0].append(runners[0].embed(ids))
    reference = FastThinkerRunner(thinker, max_length=16, backend="torch")
    torch.testing.assert_close(logits, reference.append(reference.embed(ids))[0])


@pytest.fixture
def unusable_home_cache(tmp_path, monkeypatch):
    """The default cache cannot be made (its parent is a file, as on a read-only or odd home); the system's shared
    temporary folder is a folder of the test's. Returns that temporary folder."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    blocker = tmp_path / "home-cache"
    blocker.write_text("a file where the cache's parent folder should be")
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL_DIR", str(blocker / "kernels"))
    monkeypatch.setattr(loader.tempfile, "gettempdir", lambda: str(shared))
    monkeypatch.setattr(loader, "_loaded", {})
    return shared


def test_unusable_cache_location_falls_back_to_a_private_folder_made_atomically(unusable_home_cache):
    folder = K.resolve_cache_dir()
    assert folder == str(unusable_home_cache / f"concept_talker_kernels-{os.getuid()}")
    info = os.lstat(folder)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


def test_a_folder_planted_in_the_shared_temp_dir_is_never_used(unusable_home_cache, tmp_path, monkeypatch, isa):
    """Another local user creates the fallback's predictable name first, as a link to a folder they control."""
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    (unusable_home_cache / f"concept_talker_kernels-{os.getuid()}").symlink_to(attacker, target_is_directory=True)
    loads = []
    monkeypatch.setattr(loader.ctypes, "CDLL", lambda path, *a, **k: loads.append(path))
    with pytest.warns(K.KernelFallbackWarning, match="not a folder only this user can write"):
        kernel, why = K.choose_kernel(isa)
    assert kernel is None and "symlink" in why
    assert loads == [] and not list(attacker.iterdir())  # nothing of theirs loaded, nothing built there


# ---- compilers and CPUs -----------------------------------------------------------------------------------------
def test_no_compiler_means_plain_pytorch(tmp_path, monkeypatch, isa):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(K.KernelFallbackWarning, match="no C\\+\\+ compiler") as record:
        kernel, why = K.choose_kernel(isa, cache_dir=str(tmp_path / "kernels"))
        K.choose_kernel(isa, cache_dir=str(tmp_path / "kernels"))  # asked again: no second warning
    assert kernel is None and "/nonexistent/c++" in why
    assert len(_fallbacks(record)) == 1


def test_compile_error_means_plain_pytorch(tmp_path, monkeypatch, isa):
    broken = tmp_path / "fast_thinker.cpp"
    broken.write_text('#error "broken on purpose"\n')
    monkeypatch.setattr(loader, "SOURCE", str(broken))
    with pytest.warns(K.KernelFallbackWarning, match=f"compiling the {isa} kernel failed"):
        kernel, why = K.choose_kernel(isa, cache_dir=str(tmp_path / "kernels"))
    assert kernel is None and "broken on purpose" in why
    assert not [name for name in os.listdir(tmp_path / "kernels") if name.endswith(".so")]


def test_cpu_without_the_instructions(monkeypatch):
    monkeypatch.setattr(loader, "cpu_flags", lambda: frozenset({"sse2", "avx"}))
    with pytest.warns(K.KernelFallbackWarning, match="neither AVX-512 nor AVX2"):
        assert K.choose_kernel("auto") == (None, K.choose_kernel("auto", warn=False)[1])
    with pytest.warns(K.KernelFallbackWarning, match="lacks avx512f"):
        kernel, why = K.choose_kernel("avx512")
    assert kernel is None
    thinker = _thinker()
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL", "avx2")  # forced, but this CPU cannot: warning, plain PyTorch
    with pytest.warns(K.KernelFallbackWarning, match="lacks avx2, fma, f16c"):
        assert FastThinkerRunner(thinker, max_length=16).kernel == "torch"
    with pytest.raises(RuntimeError, match="lacks avx2"):  # asked for by name: an error that says why
        FastThinkerRunner(thinker, max_length=16, backend="avx2")


def test_unknown_kernel_setting_is_ignored_with_a_warning(monkeypatch):
    monkeypatch.setenv("CONCEPT_TALKER_KERNEL", "neon")
    with pytest.warns(K.KernelFallbackWarning, match="CONCEPT_TALKER_KERNEL='neon'"):
        assert K.requested_kernel() == "auto"
    with pytest.raises(ValueError, match="kernel must be one of"):
        K.requested_kernel("sse")


# ---- the libraries in the cache ---------------------------------------------------------------------------------
def _planted_library(tmp_path, marker) -> bytes:
    """A shared library whose constructor creates `marker`: what an attacker would plant."""
    source = tmp_path / "planted.c"
    source.write_text(
        '#include <stdio.h>\n'
        f'__attribute__((constructor)) static void planted(void) {{ FILE* f = fopen("{marker}", "w"); '
        'if (f) fclose(f); }\n'
        'int ct_abi_version(void) { return 2; }\n'
    )
    out = tmp_path / "planted.so"
    compiler = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the planted library with")
    subprocess.run([compiler, "-x", "c", "-shared", "-fPIC", str(source), "-o", str(out)], check=True)
    return out.read_bytes()


@pytest.fixture
def fake_build(monkeypatch, isa):
    """Replaces compilation by a copy of the genuine library (built once per machine in the default cache)."""
    genuine = K.load_kernel(isa).path
    builds = []

    def build(isa_, name, source, cflags, cache):
        builds.append(name)
        data = open(genuine, "rb").read()
        loader._write_private(os.path.join(cache, name + ".so"), data)
        loader._write_private(os.path.join(cache, name + ".so.sha256"), hashlib.sha256(data).hexdigest().encode())

    monkeypatch.setattr(loader, "_build", build)
    return builds


def _plant(cache, name, data, record: bytes | None, mode: int = 0o755):
    path = os.path.join(cache, name + ".so")
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if record is not None:
        loader._write_private(path + ".sha256", record)
    return path


@pytest.mark.parametrize("case", ["no record", "record of other bytes", "corrupted", "group-writable", "foreign"])
def test_a_library_that_was_not_built_here_is_never_loaded(tmp_path, isa, fake_build, case):
    cache = K.trusted_cache_dir(str(tmp_path / "kernels"))
    name = loader.build_spec(isa)[0]
    marker = tmp_path / "planted-constructor-ran"
    planted = _planted_library(tmp_path, marker)
    genuine = open(K.load_kernel(isa).path, "rb").read()
    digest = hashlib.sha256(planted).hexdigest().encode()
    if case == "no record":
        _plant(cache, name, planted, None)
    elif case == "record of other bytes":  # e.g. a library left by another build, or replaced after one
        _plant(cache, name, planted, hashlib.sha256(genuine).hexdigest().encode())
    elif case == "corrupted":  # the genuine library, damaged after its hash was recorded
        damaged = bytearray(genuine)
        damaged[len(damaged) // 2] ^= 0xFF
        planted = bytes(damaged)
        _plant(cache, name, planted, hashlib.sha256(genuine).hexdigest().encode())
    elif case == "group-writable":  # hash recorded, but anyone in the group could swap the bytes
        _plant(cache, name, planted, digest, mode=0o775)
    else:
        path = _plant(cache, name, planted, digest)
        if os.geteuid() != 0:
            pytest.skip("needs root to give the planted file another owner")
        os.chown(path, 65534, 65534)
    with pytest.raises(K.KernelUnavailable):
        loader.open_verified_library(cache, name + ".so")
    kernel = K.load_kernel(isa, cache_dir=cache)
    assert not marker.exists()  # its constructor never ran
    assert fake_build == [name]  # rebuilt in its place
    assert kernel.isa == isa and open(kernel.path, "rb").read() == genuine
    assert loader.open_verified_library(cache, name + ".so") is not None


def test_a_verified_library_is_loaded_without_rebuilding(tmp_path, isa, fake_build):
    cache = str(tmp_path / "kernels")
    first = K.load_kernel(isa, cache_dir=cache)
    assert fake_build == [loader.build_spec(isa)[0]]
    assert _mode(cache) == 0o700 and not _mode(first.path) & (stat.S_IWGRP | stat.S_IWOTH)
    loader._loaded.clear()  # as a new process would
    assert K.load_kernel(isa, cache_dir=cache).path == first.path
    assert len(fake_build) == 1


def test_the_build_key_covers_source_flags_compiler_and_isa():
    base = dict(isa="avx2", source=b"int x;", cflags=["-O3"], compiler="/usr/bin/c++", compiler_version="g++ 12")
    key = loader.build_key(**base)
    for field, other in [("isa", "avx512"), ("source", b"int y;"), ("cflags", ["-O2"]), ("compiler", "/opt/c++"),
                         ("compiler_version", "g++ 13")]:
        assert loader.build_key(**{**base, field: other}) != key, field


def test_the_kernels_are_not_part_of_the_remote_code():
    """The Hub folder (modeling_concept_talker/) holds no native source, and imports the kernels only in a try."""
    import modeling_concept_talker

    folder = os.path.dirname(modeling_concept_talker.__file__)
    assert not [f for f in os.listdir(folder) if f.endswith((".cpp", ".c", ".so", ".h"))]
    for name in os.listdir(folder):
        if name.endswith(".py"):  # nothing compiles code (phonemes.py loads the system's espeak-ng with ctypes)
            text = open(os.path.join(folder, name)).read()
            for word in ("g++", "cpp_extension.load", "import subprocess", "_KERNEL_SOURCE", "#include"):
                assert word not in text, (name, word)
    fast = open(os.path.join(folder, "fast_thinker.py")).read()
    assert "import ctypes" not in fast and "CDLL" not in fast  # the kernel is loaded by the package alone
    assert os.path.isfile(loader.SOURCE)
