"""What every script of the project needs to run, and nothing else.

- `configure(globals())`: the nanoGPT-style override mechanism. Every UPPER_CASE constant that a
  script defines at its top can be replaced from the command line as `--batch_size=64` (or
  `--BATCH_SIZE=64`). An unknown name or a value of the wrong type exits with status 2 and lists
  the valid names; `--help` lists every constant with its value and its comment. Returns the
  resolved `config` dict that goes into every checkpoint and metrics file.
- `fail(message)`: the one way a script stops on a problem it cannot go past (`error: ...`,
  exit 1); `UserError` (and its kinds `CheckpointError`, `DataError`, `WriteError`) is what shared
  code raises for a problem with the user's files or settings, and `run(main)` turns it into
  `fail`, never a traceback.
- `check_settings(config, rules)` with `at_least`, `between`, `one_of`: constants checked at
  start-up, before any data is read, with the constant's name and what it may be.
- `prepare_output_dir(folder, lock_name)`: writable, enough free space, temporary files of dead
  runs removed, and locked so that a second run on the same outputs is refused (the lock dies with
  its process).
- `pick_device()`, `amp_dtype_for(device)`, `autocast_for(device)`: the one device/precision block;
  `speed_up_cuda(device, tf32)` the one switch of CUDA's math settings (each script calls it).
- `atomic_write(path)` / `atomic_save(obj, path)`: write a hidden temporary file, then rename, so a
  kill never leaves a half file; a full disk or a file-size limit is a WriteError naming the file,
  whatever the writer raised (`write_error`); `load_checkpoint(path)`: torch.load with
  weights_only=True and errors that name the file.
- `epoch_generator(seed, epoch)` and `warmup_cosine(...)`: the one per-epoch seeding and the one lr
  schedule.
- `walk_data(root, wanted, skipped)` and `open_regular(path)`: how data folders are listed and data
  files opened: symlinked folders followed (loops named), FIFOs, sockets and devices never opened,
  names that are not UTF-8 left out by name.
- `device_memory(device)` and `check_fits(needs, device)`: a size that cannot fit is refused at
  start-up, naming the settings; `free_memory()`: what this process may still take (the machine's
  available memory, ulimit -v, its cgroup's limit).

Importing this module runs nothing and loads no heavy library: torch is imported inside the
functions that use it, so that data-preparation scripts (and their worker processes) start in a
fraction of a second.
"""
import ast
import contextlib
import errno
import math
import os
import platform
import random
import re
import shutil
import stat
import sys
import time

_CONSTANT_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")


# -------------------------------------------------------------------------------------------------
# errors: one way to stop, one family of exceptions for problems the user can fix

class UserError(Exception):
    """A problem with the user's files or settings; the message names the file or setting and the
    fix."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, of the wrong kind, or that does not match its own
    config."""


class DataError(UserError, ValueError):
    """A data folder, split file or image list that cannot be used as it is."""


class WriteError(UserError, OSError):
    """A file that could not be written (disk full, folder not writable); its temporary file is
    already gone."""


class NotRegularFile(DataError):
    """A FIFO, socket or device where a data file was expected: opening it could wait forever, so
    it is refused by name (a ValueError: the image pipelines count it as unreadable)."""


def fail(message, code=1):
    """Stop the script: `error: message` on stderr and exit status `code` (1; 2 for a wrong
    setting)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(main):
    """Run a script's main; a UserError raised anywhere below ends it with `error: ...`, not a
    traceback."""
    try:
        return main()
    except UserError as error:
        fail(str(error))


def _constant_comments(source_file):
    """Map each top-level constant of a script to the comment on its line (for --help)."""
    comments = {}
    try:
        with open(source_file, encoding="utf-8") as f:
            for line in f:
                match = _CONSTANT_LINE.match(line.rstrip("\n"))
                if match and match.group(1) not in comments:
                    comments[match.group(1)] = (match.group(3) or "").strip()
    except OSError:
        pass
    return comments


def _type_name(value):
    return {int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _parse_value(name, text, current):
    """Turn the text of an override into the type of the constant it replaces, or raise
    ValueError."""
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{name} is a bool (True/False), got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{name} must be {_type_name(current)}, got {text!r}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(current):
        raise ValueError(f"{name} must be {_type_name(current)}, got {text!r}")
    return value


def overridable_constants(namespace):
    """The constants a script exposes: UPPER_CASE names assigned at the top level of its own source
    (not imported ones) and bound to a bool, int, float or str."""
    declared = _constant_comments(namespace.get("__file__", ""))
    return {k: v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and isinstance(v, (bool, int, float, str))
            and (k in declared or not declared)}


def configure(namespace, argv=None, allow_positional=0):
    """Apply `--name=value` overrides to a script's constants in place; return
    (config, positional args).

    `namespace` is the script's globals(). `allow_positional` is how many bare arguments the script
    accepts.
    """
    argv = sys.argv[1:] if argv is None else argv
    constants = overridable_constants(namespace)
    by_lower = {k.lower(): k for k in constants}
    script = os.path.basename(namespace.get("__file__", "script"))

    def reject(message):
        fail(f"{script}: {message}\n"
             f"valid names: {', '.join('--' + k.lower() for k in constants)}\n"
             f"see: python {script} --help", code=2)

    if any(a in ("-h", "--help") for a in argv):
        doc = (namespace.get("__doc__") or "").strip()
        if doc:
            print(doc + "\n")
        comments = _constant_comments(namespace.get("__file__", ""))
        print(f"usage: python {script} [--name=value ...]  (names are case-insensitive)\n")
        width = max((len(k) for k in constants), default=0) + 2
        for k, v in constants.items():
            print(f"  --{k.lower():<{width}} = {v!r:<24} {comments.get(k, '')}")
        sys.exit(0)

    positional = []
    for arg in argv:
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        if "=" not in arg:
            reject(f"override {arg!r} needs a value: write it as {arg}=VALUE")
        key, text = arg[2:].split("=", 1)
        name = by_lower.get(key.lower())
        if name is None:
            reject(f"unknown setting {key!r}")
        try:
            value = _parse_value(name, text, namespace[name])
        except ValueError as error:
            reject(str(error))
        if not is_utf8(text):
            reject(f"{name}: '{shown(text)}' is not valid UTF-8 (a name from another system?); "
                   "rename the file or folder")
        print(f"overriding: {name} = {value!r}")
        namespace[name] = value
    if len(positional) > allow_positional:
        reject(f"unexpected argument(s) {positional[allow_positional:]}: settings are written "
               "--name=value")
    for arg in positional:
        if not is_utf8(arg):
            reject(f"'{shown(arg)}' is not valid UTF-8 (a name from another system?); rename it")
    return overridable_constants(namespace), positional


def at_least(low):
    return (lambda value: value >= low), f"at least {low}"


def above(low):
    return (lambda value: value > low), f"greater than {low}"


def between(low, high):
    return (lambda value: low <= value <= high), f"between {low} and {high}"


def one_of(*choices):
    return (lambda value: value in choices), "one of " + ", ".join(repr(c) for c in choices)


def label_fractions(text):
    """The label fractions of a setting's text ("0.01 0.1 1", or with commas); None unless they
    are distinct, greater than 0 and at most 1 (fractions_rule checks a setting by this)."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        return None
    if not values or any(not 0 < v <= 1 for v in values) or len(set(values)) < len(values):
        return None
    return values


def fractions_rule(empty="not allowed"):
    """A check_settings rule for a list of label fractions; `empty` says what "" means when it is
    allowed (e.g. "the preset's")."""
    allowed = empty != "not allowed"
    return ((lambda v: (allowed and v == "") or label_fractions(v) is not None),
            "distinct label fractions greater than 0 and at most 1, e.g. '0.01 0.1 1'"
            + (f", or '' for {empty}" if allowed else ""))


def check_settings(config, rules):
    """Stop at start-up, before any data is read, on the first constant outside what it may be.

    `rules` maps a constant's name to (test, what it may be), e.g. {"BATCH_SIZE": at_least(1)}; the
    message names the constant, its value and the allowed range, and the exit status is 2, as for a
    malformed override.
    """
    for name, (allowed, description) in rules.items():
        if not allowed(config[name]):
            fail(f"{name} = {config[name]!r} is not allowed: it must be {description} "
                 f"(edit it at the top of the script or pass --{name.lower()}=...)", code=2)


# -------------------------------------------------------------------------------------------------
# device and precision: CUDA if available, else MPS, else CPU; autocast where bf16 or fp16 is native

def pick_device(requested="auto"):
    """CUDA if available, else MPS, else the CPU; a requested device that is not there stops the
    script."""
    import torch
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        fail(f"DEVICE = {requested!r} is not a device: use auto, cpu, cuda, cuda:N or mps.",
             code=2)
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        fail(f"DEVICE = {requested!r}, but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s) "
             f"(CUDA build: {torch.version.cuda or 'none'}). Use --device=auto or --device=cpu.",
             code=2)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        fail("DEVICE = 'mps', but this machine has no Apple GPU available to PyTorch. "
             "Use --device=auto.", code=2)
    if device.type not in ("cpu", "cuda", "mps"):
        fail(f"DEVICE = {requested!r}: only auto, cpu, cuda, cuda:N and mps are supported.",
             code=2)
    return device


AMP_MODES = ("auto", "bf16", "fp16", "off")


def cpu_has_native_bf16():
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower."""
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype_for(device, amp="auto"):
    """(autocast dtype, or None for fp32; the reason, for the log) for AMP =
    auto | bf16 | fp16 | off.

    auto: on CUDA, bf16 where the card computes it natively (compute capability 8.0 and up: Ampere,
    Ada, Hopper), else fp16 with a grad scaler: below 8.0 (Turing, Volta, T4) bf16 is emulated and
    cuDNN has no bf16 convolutions, although torch.cuda.is_bf16_supported() says yes. On a CPU,
    the same rule: bf16 where it is native (AVX512-BF16 or AMX), fp32 where bf16 would be emulated
    (slower than fp32). On MPS, fp32.
    bf16 / fp16 force one (on a CPU, bf16 only where it is native, fp16 never); off is fp32
    everywhere.
    """
    import torch
    if amp == "off":
        return None, "AMP = 'off'"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        capability = f"compute capability {major}.{minor}"
        if amp == "fp16":
            return torch.float16, "forced by AMP = 'fp16', with a grad scaler"
        if amp == "bf16":
            return torch.bfloat16, ("forced by AMP = 'bf16'" if major >= 8 else
                                    f"forced by AMP = 'bf16' on {capability}, where bf16 is "
                                    "emulated and slow; 'auto' would use fp16")
        if major >= 8:
            return torch.bfloat16, f"{capability} computes bf16 natively"
        return torch.float16, f"{capability} has no native bf16: fp16 with a grad scaler"
    if amp == "fp16":
        fail(f"AMP = 'fp16' needs a CUDA GPU; this run is on {device.type}. Use --amp=auto "
             "(or bf16 on a CPU with native bf16).", code=2)
    native = device.type == "cpu" and cpu_has_native_bf16()
    if amp == "bf16" and native:
        return torch.bfloat16, "AMP = 'bf16' on a CPU with native bf16 (AVX512-BF16 or AMX)"
    if amp == "bf16":
        return None, (f"AMP = 'bf16' ignored on {device.type}: no native bf16 (AVX512-BF16 or "
                      "AMX), where bf16 is slower than fp32")
    if native:
        return torch.bfloat16, "this CPU computes bf16 natively (AVX512-BF16 or AMX)"
    if device.type == "cpu":
        return None, ("this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower "
                      "than fp32")
    return None, f"AMP = 'auto' keeps {device.type} in fp32"


def precision_name(amp_dtype):
    import torch
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def speed_up_cuda(device, tf32=True):
    """The one switch of CUDA's math settings, called by each script at start-up: cuDNN
    autotuning, and TF32 for the matrix products and convolutions left in fp32 (tf32=True) or not
    (tf32=False: exact fp32, for the linear probe's features and heads). Returns what it set
    ("" elsewhere).

    Safe for training: every batch has the same shape (drop_last), so autotuning runs once per
    shape, and TF32 only touches what is left in fp32 under autocast (the loss, the linear head)
    with a 10-bit mantissa that SGD does not notice. Results are then not bit-for-bit repeatable
    on a GPU (they never are with cuDNN).
    """
    import torch
    if device.type != "cuda":
        return ""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return cuda_math()


def cuda_math():
    """The math settings CUDA runs with now, as the logs name them (read, never set)."""
    import torch

    def state(flag):
        return "on" if flag else "off"
    return (f"cuDNN benchmark {state(torch.backends.cudnn.benchmark)}, TF32 matmul "
            f"{state(torch.backends.cuda.matmul.allow_tf32)} and convolutions "
            f"{state(torch.backends.cudnn.allow_tf32)}")


def device_and_precision(device, amp_dtype, reason):
    """How the scripts name their device and precision, e.g. "cpu (2 cores, 2 threads), precision:
    fp32 (...)"; on CUDA also the math settings in force (cuda_math). It only describes: the
    settings are speed_up_cuda's, which each script calls itself."""
    return (f"{describe_device(device)}, precision: {precision_name(amp_dtype)} ({reason})"
            + (f", {cuda_math()}" if device.type == "cuda" else ""))


def autocast_for(device, amp_dtype):
    import torch
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def restore_grad_scaler(scaler, state):
    """Load a saved GradScaler state whatever precision wrote it: a bf16 or fp32 run saves an empty
    state, which an enabled fp16 scaler cannot load (it starts from its initial scale instead), and
    a disabled scaler has nothing to restore."""
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)
        return "restored"
    return "fresh" if scaler.is_enabled() else "unused"


def epoch_generator(seed, epoch, augment_stream=None):
    """The CPU generator of one epoch: the data order (the same on every rank) or, with
    augment_stream = rank + 1, that rank's augmentations. Seeding per epoch, not once per run, lets
    a resumed run replay exactly the epoch it would have had, without saving generator states."""
    import torch
    offset = epoch if augment_stream is None else epoch * 7_919 + augment_stream
    return torch.Generator().manual_seed(seed * 100_003 + offset)


def warmup_cosine(step, total_steps, warmup_steps, peak):
    """The lr of every training script: linear warm-up to `peak` over warmup_steps, then
    half-cosine to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps)
                                      / max(1, total_steps - warmup_steps)))


def seed_everything(seed):
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def library_versions():
    import numpy as np
    import torch
    import torchvision
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "numpy": str(np.__version__),
            "cuda": str(torch.version.cuda or "none"),
            "machine": f"{platform.machine()} {os.cpu_count()} cores"}


def device_memory(device):
    """The memory a run on `device` has, in bytes: the GPU's (CUDA), else the machine's RAM (the
    CPU, and MPS, which shares it)."""
    import torch
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# where the memory limit of this process's cgroup is, what the cgroup uses, and the entry of its
# memory.stat that counts the page cache (reclaimable), for cgroup v2 and v1
_CGROUPS = (("/sys/fs/cgroup", "memory.max", "memory.current", "file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
             "total_cache"))


def _numbers(path, separator=None):
    """{name: int} of a /proc or /sys file of "name value" lines, or {"": int} of a file that holds
    one number; {} where it cannot be read."""
    try:
        with open(path) as f:
            lines = [line.split(separator, 1) for line in f if line.strip()]
    except OSError:
        return {}
    pairs = [(["", *line] if len(line) == 1 else line) for line in lines]
    return {name.strip(): int(value.split()[0]) for name, value in pairs
            if value.split() and value.split()[0].isdigit()}


def free_memory():
    """The memory this process may still take, in bytes: the least of what the machine has
    available (MemAvailable), what its address-space limit (ulimit -v) leaves, and what the limit
    of its cgroup (a container's or a job's memory) leaves; math.inf where none can be read."""
    import resource
    room = [1024 * _numbers("/proc/meminfo", ":").get("MemAvailable", math.inf)]
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        room.append(limit - 1024 * _numbers("/proc/self/status", ":").get("VmSize", 0))
    for folder, limit_file, usage_file, cache in _CGROUPS:
        limit = _numbers(os.path.join(folder, limit_file)).get("")  # "max" where there is none
        usage = _numbers(os.path.join(folder, usage_file)).get("")
        if limit is not None and usage is not None and limit < 2**60:
            room.append(limit - usage + _numbers(os.path.join(folder, "memory.stat")).get(cache, 0))
    return max(0, min(room))


def check_fits(needs, device):
    """Stop at start-up (exit status 2) when what one step needs at the least exceeds the memory of
    `device`: a size typo such as --proj_dim=204800 would otherwise end in an allocation traceback
    or the kernel's out-of-memory kill. `needs` maps what takes memory to (bytes, the settings that
    set its size); the message names the settings of the largest part."""
    total, have = sum(size for size, _ in needs.values()), device_memory(device)
    if total <= have:
        return
    largest, (size, settings) = max(needs.items(), key=lambda item: item[1][0])
    parts = ", ".join(f"{what} {part / 2**30:,.1f} GiB" for what, (part, _) in needs.items())
    fail(f"one step needs at least {total / 2**30:,.1f} GiB ({parts}), but this {device.type} has "
         f"{have / 2**30:,.1f} GiB. The {largest} grow with "
         f"{', '.join(f'{name} = {value}' for name, value in settings.items())}: lower "
         f"{' or '.join('--' + name.lower() for name in settings)} (a typo?).", code=2)


def describe_device(device):
    import torch
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return f"{device.type} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# -------------------------------------------------------------------------------------------------
# files: output folders, locks, atomic writes and checked loads

# Every temporary file of the project is `.<final name>.tmp<pid>.<host>` beside its final file:
# hidden from image listings; the host and the pid tell whether the process that wrote it is still
# alive. On a file system that several nodes share, a pid says nothing about another node's
# processes, so each host judges (and removes) only its own files. Names without a host are from
# versions before it was added, and count as this host's.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(?:\.(?P<host>[A-Za-z0-9_-]+))?$")
# open lock files: kept for the life of the process, released by the kernel when it ends
_held_locks = []
# what a write fails with for want of room: a full disk, a file-size limit (ulimit -f), a quota
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _host():
    """This machine's name as it appears in temporary file names (dots and the like as _)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", platform.node()) or "host"


def temp_path_for(path):
    folder, name = os.path.split(os.path.abspath(str(path)))
    return os.path.join(folder, f".{name}.tmp{os.getpid()}.{_host()}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temp_files(folder):
    """Delete the temporary files that processes of this host, now dead, left in `folder` (a kill
    mid-write); returns their count. A live process's files are left alone, and so are other hosts'
    files, so a run never deletes another live run's work."""
    removed = 0
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = _TEMP_NAME.match(name)
        if (match and match.group("host") in (None, _host())
                and int(match.group("pid")) != os.getpid()
                and not _alive(int(match.group("pid")))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def _lack_of_space(error):
    """The OSError of a full disk, a file-size limit (ulimit -f) or a quota that `error` is, or
    was raised while handling; None if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def write_error(path, error):
    """The WriteError that names `path` for an OSError, or for any error raised because of a lack
    of space; None for every other error. Writers do not always raise the OSError themselves:
    torch.save's zip writer meets it, then raises a RuntimeError of its own ("unexpected pos")."""
    cause = error if isinstance(error, OSError) else _lack_of_space(error)
    if cause is None or isinstance(error, UserError):
        return None
    return WriteError(f"cannot write {path} (disk full or not writable?): "
                      f"{cause.strerror or cause}")


@contextlib.contextmanager
def atomic_write(path, mode="wb", durable=True):
    """Open a temporary file beside `path`; when the block ends, flush it (to disk when `durable`)
    and rename it over `path`, so readers see the old file or the new one, never half of one. On
    any failure the temporary file is removed; an OSError, or whatever a writer raised because of
    a full disk or a file-size limit, becomes a WriteError that names the file."""
    path = str(path)
    tmp = temp_path_for(path)
    text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(tmp, mode, **text) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        named = write_error(path, error)
        if named is not None:
            raise named from None
        raise


def atomic_save(obj, path):
    """torch.save through atomic_write: a kill or a full disk never leaves a half checkpoint under
    `path`."""
    import torch
    with atomic_write(path) as f:
        torch.save(obj, f)


def prepare_output_dir(folder, lock_name=None, need_bytes=0, setting="OUTPUT_DIR"):
    """Check at start-up, before any training time is spent, that `folder` can take this run's
    files.

    Creates it; stops if it is a file, not writable, or has less than `need_bytes` free; removes
    temporary files of dead runs; with `lock_name`, takes `folder/.<lock_name>.lock` so that a
    second run writing the same files is refused. The lock is an flock: the kernel drops it when
    the process ends, so a killed run never leaves it stuck.
    """
    import fcntl
    if os.path.exists(folder) and not os.path.isdir(folder):
        fail(f"{setting} {folder!r} is a file, not a folder: choose another --{setting.lower()}.")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = temp_path_for(os.path.join(folder, "write_test"))
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as error:
        fail(f"cannot write to {setting} {folder!r} "
             f"({getattr(error, 'strerror', None) or error}): choose "
             f"another --{setting.lower()} on a writable disk.")
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        fail(f"{setting} {folder!r} has {free / 2**30:.2f} GiB free, and this run needs about "
             f"{need_bytes / 2**30:.2f} GiB: free some space or choose another "
             f"--{setting.lower()}.")
    removed = remove_stale_temp_files(folder)
    if removed:
        print(f"removed {removed} temporary file(s) of an interrupted run from {folder}")
    if lock_name:
        handle = open(os.path.join(folder, f".{lock_name}.lock"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            fail(f"{folder!r} is in use by another {lock_name} run ({holder}); two runs would "
                 "overwrite each other's files. Wait for it to end, stop it, or pass another "
                 f"--{setting.lower()}.")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}, "
                     f"started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _held_locks.append(handle)


# -------------------------------------------------------------------------------------------------
# data folders: what may be listed and opened

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def is_utf8(name):
    """False for a name with bytes that are not UTF-8 (Python holds them as lone surrogates), which
    no CSV, JSON or log line of the project could write."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path):
    """A path as a log line can print it: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _special_kind(mode):
    return next((kind for test, kind in _KINDS if test(mode)), None)


def special_file(path):
    """What `path` is when it is a FIFO, socket or device ("a named pipe (FIFO)", ...); None for a
    regular file, a folder or a path that does not exist."""
    try:
        return _special_kind(os.stat(path).st_mode)
    except OSError:
        return None


def open_regular(path, mode="rb", **kwargs):
    """open() for a data file, refusing a FIFO, socket or device (NotRegularFile) instead of
    opening it: opening a FIFO waits for a writer forever. Opened without blocking, then checked,
    so that the file cannot be swapped in between (a socket cannot be opened at all)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        kind = _special_kind(os.fstat(fd).st_mode)
    except OSError:
        fd, kind = None, special_file(path)
        if not kind:
            raise
    if kind:
        if fd is not None:
            os.close(fd)
        raise NotRegularFile(f"{shown(path)} is {kind}, not a regular file; reading it could wait "
                             "forever. Move it out of the data folder.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, **kwargs)


def walk_data(root, wanted, skipped):
    """os.walk(root) for the readers of data folders, each folder's names sorted:
    - symlinked folders are followed, and each real folder is listed once: a link to a folder
      listed already (a loop, or a second way to the same folder) is not entered;
    - of the file names that `wanted(name)` keeps, only regular files with UTF-8 names are given,
      and only folders with UTF-8 names are entered: a FIFO, socket or device could block a reader
      for ever, and a name that is not UTF-8 cannot be written to a CSV or a log line.
    What is left out is appended to `skipped` as "path: why" (see report_skipped)."""
    seen = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            skipped.append(f"{shown(folder)}: a link to a folder listed already (a loop?); not "
                           "listed again")
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        for names, keep in ((dirnames, lambda name: True), (filenames, wanted)):
            usable = []
            for name in sorted(filter(keep, names)):
                path = os.path.join(folder, name)
                kind = special_file(path)
                if kind or not is_utf8(name):
                    skipped.append(f"{shown(path)}: " + (
                        f"{kind}, not a regular file" if kind
                        else "the name is not valid UTF-8; rename it"))
                else:
                    usable.append(name)
            names[:] = usable  # in place: os.walk enters only the folders left in dirnames
        yield folder, dirnames, filenames


def report_skipped(skipped, root, log=print):
    """One warning line for what walk_data left out under `root`, naming the first few."""
    if skipped:
        log(f"warning: left out {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} under "
            f"{shown(root)}: {'; '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")


def die_with_parent():
    """In a worker process: ask Linux to end it when its parent dies, so a killed script leaves no
    worker writing on (a Pool initializer). Elsewhere a no-op; workers then stop at their next
    task."""
    import ctypes
    import signal
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def load_checkpoint(path, kinds=None):
    """torch.load(weights_only=True): a pickle that would run code is refused without running it.

    `kinds` lists the acceptable values of the checkpoint's "kind" entry (None accepts any dict
    checkpoint).
    """
    import torch
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file. Check the path, or run the step "
                              "that writes it.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), probably from an interrupted "
                              "copy. Delete it and rerun the step that writes it.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch raises several types for truncated, foreign and unsafe files
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            reason = ("it holds Python objects that loading would have to execute code for, so "
                      "it was refused without running anything. Only load checkpoints written by "
                      "this project")
        else:
            reason = ("it is not a readable PyTorch checkpoint "
                      f"({type(error).__name__}: {text.splitlines()[0][:120]}); "
                      "it may be truncated or not a checkpoint at all. Re-copy it or rerun the "
                      "step that writes it")
        raise CheckpointError(f"{path}: {reason}.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict written by this project, "
                              f"found a {type(obj).__name__}.")
    if kinds is not None and obj.get("kind") not in kinds:
        raise CheckpointError(f"{path}: this is a {obj.get('kind', 'foreign')!r} file, but a "
                              f"{' or '.join(repr(k) for k in kinds)} checkpoint is needed here.")
    return obj
