"""What every script of the project needs to run, and nothing else.

- `configure(globals())`: the nanoGPT-style override mechanism. Every UPPER_CASE constant that a script defines
  at its top can be replaced from the command line as `--batch_size=64` (or `--BATCH_SIZE=64`). An unknown name
  or a value of the wrong type exits with status 2 and lists the valid names; `--help` lists every constant with
  its value and its comment. Returns the resolved `config` dict that goes into every checkpoint and metrics file.
- `pick_device()`, `autocast_for(device)`: the one device/precision block used by every script.
- `atomic_save(obj, path)`: torch.save to a temporary file, then rename, so a kill never leaves a half file.
- `load_checkpoint(path)`: torch.load with weights_only=True and errors that name the file and the fix.

Importing this module runs nothing and loads no heavy library: torch is imported inside the functions that use it,
so that data-preparation scripts (and their worker processes) start in a fraction of a second.
"""
import ast
import contextlib
import os
import platform
import random
import re
import sys

_CONSTANT_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")


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
    """Turn the text of an override into the type of the constant it replaces, or raise ValueError."""
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
    """The constants a script exposes: UPPER_CASE names assigned at the top level of its own source (not
    imported ones) and bound to a bool, int, float or str."""
    declared = _constant_comments(namespace.get("__file__", ""))
    return {k: v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and isinstance(v, (bool, int, float, str))
            and (k in declared or not declared)}


def configure(namespace, argv=None, allow_positional=0):
    """Apply `--name=value` overrides to a script's constants in place; return (config, positional args).

    `namespace` is the script's globals(). `allow_positional` is how many bare arguments the script accepts.
    """
    argv = sys.argv[1:] if argv is None else argv
    constants = overridable_constants(namespace)
    by_lower = {k.lower(): k for k in constants}
    script = os.path.basename(namespace.get("__file__", "script"))

    def fail(message):
        print(f"{script}: {message}", file=sys.stderr)
        print(f"valid names: {', '.join('--' + k.lower() for k in constants)}", file=sys.stderr)
        print(f"see: python {script} --help", file=sys.stderr)
        sys.exit(2)

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
            fail(f"override {arg!r} needs a value: write it as {arg}=VALUE")
        key, text = arg[2:].split("=", 1)
        name = by_lower.get(key.lower())
        if name is None:
            fail(f"unknown setting {key!r}")
        try:
            value = _parse_value(name, text, namespace[name])
        except ValueError as error:
            fail(str(error))
        print(f"overriding: {name} = {value!r}")
        namespace[name] = value
    if len(positional) > allow_positional:
        fail(f"unexpected argument(s) {positional[allow_positional:]}: settings are written --name=value")
    return overridable_constants(namespace), positional


# ----------------------------------------------------------------------------------------------------------------
# device and precision: CUDA if available, else MPS, else CPU; autocast only on CUDA.

def pick_device(requested="auto"):
    import torch
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16():
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype_for(device, enabled=True, cpu_bf16=False):
    """bf16 on CUDA where supported, else fp16 (needs a grad scaler); on a CPU, bf16 only when asked (cpu_bf16) and
    the CPU has it natively; None (fp32) elsewhere."""
    import torch
    if device.type == "cpu" and cpu_bf16:
        if cpu_has_native_bf16():
            return torch.bfloat16
        print("note: CPU_BF16 ignored: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower than "
              "fp32; running in fp32", file=sys.stderr)
        return None
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def channels_last_for(device, amp_dtype, enabled=True):
    """channels_last pays off on CUDA and under CPU bf16 (oneDNN's fast convolutions); elsewhere it only costs."""
    return enabled and (device.type == "cuda" or amp_dtype is not None)


def autocast_for(device, amp_dtype):
    import torch
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


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
            "cuda": str(torch.version.cuda or "none"), "machine": f"{platform.machine()} {os.cpu_count()} cores"}


def describe_device(device):
    import torch
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return f"{device.type} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------------------------------------
# files: atomic writes and checked loads

def atomic_save(obj, path):
    """Write with torch.save to `path.tmp`, flush to disk, then rename: readers see the old file or the new one."""
    import torch
    path = str(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or of the wrong kind; the message names the file and the fix."""


def load_checkpoint(path, kinds=None):
    """torch.load(weights_only=True): a pickle that would run code is refused without running it.

    `kinds` lists the acceptable values of the checkpoint's "kind" entry (None accepts any dict checkpoint).
    """
    import torch
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file. Check the path, or run the step that writes it.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), probably from an interrupted copy. "
                              "Delete it and rerun the step that writes it.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated, foreign and unsafe files
        text = str(error)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            reason = ("it holds Python objects that loading would have to execute code for, so it was refused "
                      "without running anything. Only load checkpoints written by this project")
        else:
            reason = (f"it is not a readable PyTorch checkpoint ({type(error).__name__}: {text.splitlines()[0][:120]}); "
                      "it may be truncated or not a checkpoint at all. Re-copy it or rerun the step that writes it")
        raise CheckpointError(f"{path}: {reason}.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict written by this project, found a "
                              f"{type(obj).__name__}.")
    if kinds is not None and obj.get("kind") not in kinds:
        raise CheckpointError(f"{path}: this is a {obj.get('kind', 'foreign')!r} file, but a "
                              f"{' or '.join(repr(k) for k in kinds)} checkpoint is needed here.")
    return obj
