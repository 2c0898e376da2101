"""Building, caching, verifying and loading the native decode kernel, one build per instruction set.

The kernel (`fast_thinker.cpp`, next to this file) is compiled with `torch.utils.cpp_extension.load` on first use,
once per instruction set and per user, into a cache directory only that user can write (`trusted_cache_dir`). The
file name carries a key that hashes the source, the compiler flags, the compiler's identity, the instruction set
and torch's version, so a changed source or compiler never picks up an old build. A SHA-256 of the library's bytes is
recorded at build time and checked before every load (`open_verified_library`): a library that does not match, is
not owned by this user, or is writable by others is never loaded; it is rebuilt.

Instruction sets, fastest first:
- `avx512`: AVX-512 F/BW/DQ/VL (+ AVX512-BF16 dot products where the CPU has them), 16 fp32 lanes;
- `avx2`: AVX2 + FMA + F16C, 8 fp32 lanes (every x86-64 CPU since Intel Haswell and AMD Zen 1; an AVX-512 CPU runs it
  too, so it can be built and tested everywhere).

Where the default cache cannot be made (e.g. a read-only home), `concept_talker_kernels-<uid>` in the system's
temporary folder is used instead, under the same checks (`resolve_cache_dir`).

`choose_kernel` picks one at run time: what the caller asks for, else `$CONCEPT_TALKER_KERNEL` (`auto`, `avx512`,
`avx2` or `torch`), else the fastest the CPU supports; when the kernel cannot be had (no compiler, a compile error,
a cache directory others can write, a CPU without the instructions) it returns None with the reason, and warns once
(`KernelFallbackWarning`): the caller then runs plain PyTorch.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings

logger = logging.getLogger(__name__)

ABI_VERSION = 2
MAX_TOKENS = 64  # the kernel's per-step limit (its stack buffers hold 64 tokens)
LAYER_SLOTS = 15  # pointers per layer in ModelStruct.layer, in the kernel's S_* order
ISAS = ("avx512", "avx2")  # fastest first
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fast_thinker.cpp")
ENV_KERNEL = "CONCEPT_TALKER_KERNEL"
ENV_CACHE_DIR = "CONCEPT_TALKER_KERNEL_DIR"

# CPU flags (as /proc/cpuinfo names them) each instruction set needs, and its compiler flags.
REQUIRED_CPU_FLAGS = {
    "avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"),
    "avx2": ("avx2", "fma", "f16c"),
}
_ISA_CFLAGS = {
    "avx512": ["-DCT_ISA_AVX512", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-DCT_ISA_AVX2", "-mavx2", "-mfma", "-mf16c"],
}
_COMMON_CFLAGS = ["-O3", "-fopenmp"]


class KernelUnavailable(RuntimeError):
    """The native kernel cannot be used here; the message says why (the caller falls back to PyTorch)."""


class UntrustedCacheDir(KernelUnavailable):
    """The kernel cache directory could be written by someone else: nothing in it is built or loaded."""


class KernelFallbackWarning(RuntimeWarning):
    """The native kernel could not be had, so the fast runners run plain PyTorch (slower, same results)."""


class ModelStruct(ctypes.Structure):
    """Mirror of the kernel's `struct Model`."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "hidden", "heads", "kv_heads", "head_dim", "inter", "layers", "vocab", "max_len", "batch",
            "wdtype", "cdtype", "lo_split", "nthreads", "act_stride", "score_stride", "dynamic", "yield_barrier",
        )
    ] + [("eps", ctypes.c_double), ("scale", ctypes.c_double)] + [
        (name, ctypes.c_void_p)
        for name in (
            "layer", "norm", "lm_w", "lm_s", "rope_cos", "rope_sin", "valid", "qkv", "attn", "mid", "act", "scores",
        )
    ]


def make_model_struct(layer_pointers: list[int | None], **fields) -> tuple[ModelStruct, object, object]:
    """A `ModelStruct` for `Kernel.step`: `layer_pointers` (`LAYER_SLOTS` per layer, None for absent tensors) and
    the other fields by name (pointers as ints). Returns `(struct, reference to pass to step, pointer array)`; keep
    all three alive while the kernel may run (the struct points into the array)."""
    array = (ctypes.c_void_p * len(layer_pointers))(*layer_pointers)
    struct = ModelStruct(layer=ctypes.cast(array, ctypes.c_void_p), **fields)
    return struct, ctypes.byref(struct), array


# ---- the CPU ----------------------------------------------------------------------------------------------------
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (`/proc/cpuinfo`); empty elsewhere. Linux lists only what the
    kernel enabled (AVX-512 disabled by the OS is absent)."""
    return _read_cpu_flags()


@functools.lru_cache(maxsize=1)
def _read_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _platform_supported() -> str | None:
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the native kernels are built for x86-64 Linux only (this is {sys.platform}/{platform.machine()})"
    return None


def missing_cpu_flags(isa: str, flags: frozenset[str] | None = None) -> list[str]:
    """The CPU flags `isa` needs that this CPU lacks (empty: it can run it)."""
    flags = cpu_flags() if flags is None else flags
    return [flag for flag in REQUIRED_CPU_FLAGS[isa] if flag not in flags]


def supported_isas(flags: frozenset[str] | None = None) -> list[str]:
    """The instruction sets this machine can run, fastest first (empty off x86-64 Linux)."""
    if _platform_supported() is not None:
        return []
    return [isa for isa in ISAS if not missing_cpu_flags(isa, flags)]


def describe_cpu(flags: frozenset[str] | None = None) -> str:
    """A short account of the vector instructions of this CPU, e.g. 'avx512 (bf16, vnni), avx2, fma, f16c'."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return f"{platform.machine()} (no x86 CPU flags found)"
    parts = []
    if "avx512f" in flags:
        extras = [name for name, flag in (("bf16", "avx512_bf16"), ("vnni", "avx512_vnni")) if flag in flags]
        parts.append("avx512" + (f" ({', '.join(extras)})" if extras else ""))
    parts += [flag for flag in ("avx2", "fma", "f16c") if flag in flags]
    return ", ".join(parts) or "no AVX2 or AVX-512"


def compile_flags(isa: str, flags: frozenset[str] | None = None) -> list[str]:
    """The compiler flags of `isa`'s build on this CPU (AVX512-BF16 and AVX512-VNNI where the CPU has them)."""
    flags = cpu_flags() if flags is None else flags
    extra = []
    if isa == "avx512":  # optional extensions, used where the CPU has them
        extra = [f"-m{name}" for name, flag in (("avx512bf16", "avx512_bf16"), ("avx512vnni", "avx512_vnni"))
                 if flag in flags]
    return _COMMON_CFLAGS + _ISA_CFLAGS[isa] + extra


# ---- the cache directory and library verification ---------------------------------------------------------------
def _current_uid() -> int:
    return os.geteuid()


def default_cache_dir() -> str:
    """`$CONCEPT_TALKER_KERNEL_DIR`, else `$XDG_CACHE_HOME/concept_talker/kernels` (`~/.cache/...`)."""
    if os.environ.get(ENV_CACHE_DIR):
        return os.path.abspath(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "concept_talker", "kernels")


def trusted_cache_dir(path: str | None = None) -> str:
    """The kernel cache directory, created or checked so that only the current user can write in it.

    The one place that decides whether the cache can be trusted. The directory (default `default_cache_dir()`) is
    created atomically with mode 0700 (`mkdir` fails rather than follow or reuse something else). An existing one
    must be a real directory (not a symlink), owned by the current user and writable by nobody else; if it is only
    readable by others, it is tightened to 0700. Anything else raises `UntrustedCacheDir`: a library in a directory
    another user can write could have been planted there, and loading it would run their code as this user.
    """
    path = os.path.abspath(path or default_cache_dir())
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    except OSError as err:
        raise KernelUnavailable(f"cannot create the kernel cache's parent {parent}: {err.strerror}") from err
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise KernelUnavailable(f"cannot create the kernel cache {path}: {err.strerror}") from err
    try:
        info = os.lstat(path)
    except OSError as err:
        raise KernelUnavailable(f"cannot read the kernel cache {path}: {err.strerror}") from err
    uid = _current_uid()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UntrustedCacheDir(f"the kernel cache {path} is not a directory of its own (a symlink or a file)")
    if info.st_uid != uid:
        raise UntrustedCacheDir(
            f"the kernel cache {path} belongs to uid {info.st_uid}, not to this user (uid {uid}): remove it, or set "
            f"{ENV_CACHE_DIR} to a directory of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedCacheDir(
            f"the kernel cache {path} is writable by others (mode {mode:04o}): a library there could have been "
            f"planted; remove the directory (it is rebuilt with mode 0700)"
        )
    if mode != 0o700:
        os.chmod(path, 0o700)  # ours, and nobody else could write in it: only tighten
    return path


def fallback_cache_dir() -> str:
    """Where kernels are cached when `default_cache_dir()` cannot be made (e.g. a read-only home):
    `concept_talker_kernels-<uid>` in the system's temporary folder, used only through `trusted_cache_dir`."""
    return os.path.join(tempfile.gettempdir(), f"concept_talker_kernels-{_current_uid()}")


def resolve_cache_dir(cache_dir: str | None = None) -> str:
    """The private folder kernels are built in and loaded from.

    `cache_dir` when given (it must be trusted: `trusted_cache_dir`). Otherwise `default_cache_dir()`; where that
    cannot be created at all (not: exists but others could write it), `fallback_cache_dir()`, checked the same way,
    so a name someone else planted in the shared temporary folder (a symlink, a folder of theirs) is refused, never
    used. Raises `KernelUnavailable` / `UntrustedCacheDir` saying why no folder can be had.
    """
    if cache_dir is not None:
        return trusted_cache_dir(cache_dir)
    try:
        return trusted_cache_dir(default_cache_dir())
    except UntrustedCacheDir:
        raise
    except KernelUnavailable as err:
        fallback = fallback_cache_dir()
        try:
            path = trusted_cache_dir(fallback)
        except UntrustedCacheDir as fallback_err:
            raise UntrustedCacheDir(
                f"{err}; and the fallback {fallback} is not a folder only this user can write ({fallback_err}): "
                f"set {ENV_CACHE_DIR} to a directory of your own"
            ) from fallback_err
        logger.info("Caching kernels in %s (%s).", path, err)
        return path


def _check_own_file(fd: int, what: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise KernelUnavailable(f"{what} is not a regular file")
    if info.st_uid != _current_uid():
        raise KernelUnavailable(f"{what} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelUnavailable(f"{what} is writable by others")


def _open_in(directory: str, name: str) -> int:
    """Opens `directory/name` for reading without following a symlink at the last step."""
    return os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_verified_library(directory: str, name: str) -> tuple[int, str] | None:
    """`(fd, path to load)` of the library `directory/name` if it is the one built here, else None.

    Checked on the open file (so it cannot be swapped between check and load): a regular file owned by this user and
    writable by nobody else, whose SHA-256 equals the one recorded at build time in `name + ".sha256"`. The caller
    loads it through `/proc/self/fd/<fd>` (the very file that was hashed) and keeps the fd open while it is loaded. Raises
    `KernelUnavailable` for a library that exists but fails a check (the caller rebuilds); None when there is none.
    """
    try:
        fd = _open_in(directory, name)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise KernelUnavailable(f"{name} in the kernel cache is a symlink") from err
        raise KernelUnavailable(f"cannot open {name} in the kernel cache: {err.strerror}") from err
    try:
        _check_own_file(fd, name)
        digest = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        try:
            record_fd = _open_in(directory, name + ".sha256")
        except FileNotFoundError as err:
            raise KernelUnavailable(f"{name} has no hash recorded at build time") from err
        except OSError as err:
            raise KernelUnavailable(f"cannot open the hash record of {name}: {err.strerror}") from err
        with os.fdopen(record_fd, "r") as record:
            _check_own_file(record.fileno(), name + ".sha256")
            expected = record.read(200).strip()
        if digest.hexdigest() != expected:
            raise KernelUnavailable(f"{name} does not match the hash recorded when it was built (stale or replaced)")
    except BaseException:
        os.close(fd)
        raise
    return fd, f"/proc/self/fd/{fd}"


def _write_private(path: str, data: bytes) -> None:
    """Writes `path` atomically (a new file, mode 0600, renamed into place)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- building -----------------------------------------------------------------------------------------------------
def _compiler() -> tuple[str, str]:
    """The C++ compiler torch.utils.cpp_extension will use (`$CXX`, else `c++`) and its `--version` output."""
    cxx = os.environ.get("CXX") or "c++"
    found = shutil.which(cxx)
    if found is None:
        raise KernelUnavailable(f"no C++ compiler: {cxx!r} was not found (install g++, or set CXX to a compiler)")
    try:
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f"the C++ compiler {found} cannot be run: {err}") from err
    if version.returncode != 0:
        raise KernelUnavailable(f"the C++ compiler {found} cannot be run: {version.stderr.strip()[-300:]}")
    return found, version.stdout.strip()


def _ninja_on_path() -> None:
    """cpp_extension runs `ninja` from PATH; the `ninja` wheel installs it next to the interpreter."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI wheel

        candidates.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "ninja")):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return
    raise KernelUnavailable("ninja is not installed (pip install ninja), which torch.utils.cpp_extension needs")


def build_key(isa: str, source: bytes, cflags: list[str], compiler: str, compiler_version: str) -> str:
    """What a build depends on, hashed: the source, the flags, the compiler, the instruction set, torch, the ABI."""
    import torch

    parts = [source, " ".join(cflags).encode(), compiler.encode(), compiler_version.encode(), isa.encode(),
             torch.__version__.encode(), str(ABI_VERSION).encode()]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()[:20]


def _build(isa: str, name: str, source: bytes, cflags: list[str], cache: str) -> None:
    """Compiles `source` with torch.utils.cpp_extension in a fresh private folder of `cache`, then installs the
    library as `cache/name.so` with its SHA-256 beside it (both renamed into place)."""
    from torch.utils import cpp_extension

    _ninja_on_path()
    staging = tempfile.mkdtemp(prefix=f"build-{isa}-", dir=cache)  # mode 0700, a name nobody can predict
    try:
        staged_source = os.path.join(staging, "fast_thinker.cpp")
        with open(staged_source, "wb") as f:
            f.write(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cpp_extension's notes about compiler versions
            built = cpp_extension.load(
                name=name, sources=[staged_source], extra_cflags=cflags, extra_ldflags=["-fopenmp"],
                build_directory=staging, is_python_module=False, verbose=False,
            )
        with open(built, "rb") as f:
            data = f.read()
        os.replace(built, os.path.join(cache, name + ".so"))
        _write_private(os.path.join(cache, name + ".so.sha256"), hashlib.sha256(data).hexdigest().encode())
    except KernelUnavailable:
        raise
    except Exception as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        diagnostics = [line for line in lines if " error: " in line or line.startswith("error: ")]
        shown = [line.replace(staging + os.sep, "") for line in (diagnostics[:3] or lines[-3:])]
        raise KernelUnavailable(f"compiling the {isa} kernel failed: {' / '.join(shown)[:600]}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Kernel:
    """A loaded native kernel: `isa` ("avx512" or "avx2"), `name` (the path that runs: "avx512-bf16", "avx512",
    "avx2"), `bf16_dot` (AVX512-BF16 dot products), `lanes` (fp32 lanes per vector), `path` (the cached library)."""

    def __init__(self, lib: ctypes.CDLL, isa: str, path: str):
        if lib.ct_abi_version() != ABI_VERSION:
            raise KernelUnavailable(f"{path} has kernel ABI {lib.ct_abi_version()}, expected {ABI_VERSION}")
        lib.ct_read.restype = ctypes.c_double
        lib.ct_read.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        lib.ct_step.restype = ctypes.c_int
        lib.ct_step.argtypes = [ctypes.POINTER(ModelStruct), ctypes.c_int64] + [ctypes.c_void_p] * 4 + [
            ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
        ]
        self.lib = lib
        self.isa = isa
        self.path = path
        self.bf16_dot = bool(lib.ct_has_bf16_dot())
        self.lanes = int(lib.ct_lanes())
        self.max_tokens = int(lib.ct_max_tokens())
        self.name = isa + ("-bf16" if self.bf16_dot else "")

    def step(self, struct_ref, T: int, x: int, rows: int, slots: int, positions: int, n_logits: int,
             logit_tokens: int, logits: int, hidden: int) -> None:
        """One decode/prefill step (pointers as ints); see `ct_step` in fast_thinker.cpp."""
        if self.lib.ct_step(struct_ref, T, x, rows, slots, positions, n_logits, logit_tokens, logits, hidden):
            raise ValueError(f"the kernel takes 1 to {self.max_tokens} tokens per step, got {T}")

    def read(self, pointer: int, nbytes: int, threads: int) -> float:
        return self.lib.ct_read(pointer, nbytes, threads)

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, {self.path!r})"


def _warn_if_second_openmp() -> None:
    try:
        with open("/proc/self/maps") as f:
            mapped = {os.path.realpath(line.split()[-1]) for line in f if line.count("/")}
    except OSError:
        return
    runtimes = {p for p in mapped if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))}
    if len(runtimes) > 1:
        logger.warning("The native kernel loaded a second OpenMP runtime next to torch's (%s): threads may compete.",
                       ", ".join(sorted(runtimes)))


def _check_cpu(isa: str) -> None:
    why = _platform_supported()
    if why:
        raise KernelUnavailable(why)
    missing = missing_cpu_flags(isa)
    if missing:
        raise KernelUnavailable(f"this CPU lacks {', '.join(missing)}, which the {isa} kernel needs")


def build_spec(isa: str) -> tuple[str, bytes, list[str]]:
    """`(library name, source, compiler flags)` of `isa`'s build on this machine; the name carries the build key.
    Raises `KernelUnavailable` when no compiler can be run."""
    with open(SOURCE, "rb") as f:
        source = f.read()
    cflags = compile_flags(isa)
    compiler, version = _compiler()
    return f"ct_fast_thinker_{isa}_{build_key(isa, source, cflags, compiler, version)}", source, cflags


def _load_or_build(isa: str, cache_dir: str | None) -> Kernel:
    name, source, cflags = build_spec(isa)
    cache = resolve_cache_dir(cache_dir)
    lock_fd = os.open(os.path.join(cache, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one builder at a time, across processes
        opened = None
        try:
            opened = open_verified_library(cache, name + ".so")
        except KernelUnavailable as err:
            logger.warning("Not loading the cached kernel: %s; rebuilding it.", err)
            for stale in (name + ".so", name + ".so.sha256"):
                try:
                    os.unlink(os.path.join(cache, stale))
                except FileNotFoundError:
                    pass
        if opened is None:
            start = time.perf_counter()
            logger.info("Compiling the %s decode kernel (once per machine and user) into %s", isa, cache)
            _build(isa, name, source, cflags, cache)
            logger.info("Compiled the %s kernel in %.1f s", isa, time.perf_counter() - start)
            opened = open_verified_library(cache, name + ".so")
            if opened is None:
                raise KernelUnavailable("the kernel was built but is missing from the cache")
        fd, loadable = opened
        try:
            lib = ctypes.CDLL(loadable)
        except OSError as err:
            os.close(fd)
            raise KernelUnavailable(f"loading {name}.so failed: {err}") from err
        # The fd stays open for the life of the process (as the library stays loaded): the loader knows the
        # library by the name /proc/self/fd/<fd>, which must never name another file later.
        _open_library_fds.append(fd)
    finally:
        os.close(lock_fd)
    _warn_if_second_openmp()
    return Kernel(lib, isa, os.path.join(cache, name + ".so"))


_lock = threading.Lock()
_open_library_fds: list[int] = []
_loaded: dict[tuple, Kernel | KernelUnavailable] = {}
_warned: set[str] = set()


def load_kernel(isa: str, cache_dir: str | None = None) -> Kernel:
    """The kernel for `isa` ("avx512" or "avx2"): loaded from the cache after verification, or built (seconds, once
    per machine and user). Raises `KernelUnavailable` saying why it cannot be had. Remembered per process."""
    if isa not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {isa!r}")
    _check_cpu(isa)  # before the memo: what this CPU (as reported now) cannot run is never used
    cache_dir = os.path.abspath(cache_dir) if cache_dir else None
    key = (isa, cache_dir or default_cache_dir(), tuple(compile_flags(isa)))
    with _lock:
        if key not in _loaded:
            try:
                _loaded[key] = _load_or_build(isa, cache_dir)
            except KernelUnavailable as err:
                _loaded[key] = err
            except Exception as err:  # anything unexpected also means: run plain PyTorch
                _loaded[key] = KernelUnavailable(f"{type(err).__name__}: {err}")
        result = _loaded[key]
    if isinstance(result, KernelUnavailable):
        raise result
    return result


def requested_kernel(request: str = "auto") -> str:
    """What to run: `request` ("auto", "avx512", "avx2" or "torch") where it names one, else `$CONCEPT_TALKER_KERNEL`
    (legacy: `CONCEPT_TALKER_NATIVE=0` means "torch"), else "auto"."""
    choices = ("auto",) + ISAS + ("torch",)
    if request not in choices:
        raise ValueError(f"kernel must be one of {choices}, got {request!r}")
    if request != "auto":
        return request
    env = os.environ.get(ENV_KERNEL, "").strip().lower()
    if env:
        if env not in choices:
            _warn_once(f"{ENV_KERNEL}={env!r} is not one of {', '.join(choices)}: ignored")
            return "auto"
        return env
    if os.environ.get("CONCEPT_TALKER_NATIVE", "1") == "0":
        return "torch"
    return "auto"


def _warn_once(message: str) -> None:
    with _lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, KernelFallbackWarning, stacklevel=3)
    logger.warning(message)


def choose_kernel(request: str = "auto", cache_dir: str | None = None, warn: bool = True) -> tuple[Kernel | None, str | None]:
    """The kernel to run, or `(None, why)` for plain PyTorch.

    `request`: "auto" (`$CONCEPT_TALKER_KERNEL`, else the fastest instruction set the CPU supports), "avx512",
    "avx2" or "torch". A kernel that was asked for or expected but cannot be had (no compiler, a compile error, an
    untrusted cache, a CPU without the instructions) gives one `KernelFallbackWarning` per reason and process.
    """
    wanted = requested_kernel(request)
    if wanted == "torch":
        return None, f"plain PyTorch asked for ({ENV_KERNEL}=torch)" if request == "auto" else "plain PyTorch asked for"
    if wanted == "auto":
        isas = supported_isas()
        if not isas:
            why = _platform_supported() or f"this CPU has neither AVX-512 nor AVX2 + FMA + F16C ({describe_cpu()})"
            if warn:
                _warn_once(f"No native decode kernel: {why}; the fast runners use plain PyTorch.")
            return None, why
        wanted = isas[0]
    try:
        return load_kernel(wanted, cache_dir), None
    except KernelUnavailable as err:
        why = str(err)
        if warn:
            _warn_once(f"The {wanted} decode kernel is unavailable: {why}; the fast runners use plain PyTorch.")
        return None, why


def read_bandwidth(kernel: Kernel, nbytes: int, repeats: int, threads: int, clock=None) -> float:
    """Memory read bandwidth (bytes/s) as the kernel streams: median of `repeats` reads of an `nbytes` block on
    transparent huge pages (where Linux grants them) with `threads` threads, timed by `clock` (default
    `time.perf_counter`)."""
    clock = clock or time.perf_counter
    import mmap

    import torch

    nbytes = nbytes // 256 * 256
    huge = 2 << 20
    block = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        block.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    buffer = torch.frombuffer(block, dtype=torch.uint8)
    offset = (-buffer.data_ptr()) % huge
    data = buffer[offset : offset + nbytes].view(torch.float32)
    data.fill_(1.0)
    kernel.read(data.data_ptr(), nbytes, threads)
    times = []
    for _ in range(repeats):
        start = clock()
        kernel.read(data.data_ptr(), nbytes, threads)
        times.append(clock() - start)
    times.sort()
    del data, buffer
    return nbytes / times[len(times) // 2]
