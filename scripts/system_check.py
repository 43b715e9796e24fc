"""Step 0 of the README: what this machine offers the pipeline (PyTorch, CUDA, GPU, CPU cores,
package versions).

    python scripts/system_check.py
"""
import importlib.metadata
import os
import platform

import torch

PACKAGES = ("torch", "torchvision", "numpy", "pillow", "pandas", "scikit-learn", "tqdm", "zarr",
            "matplotlib", "pytest")

print(f"python {platform.python_version()} on {platform.platform()}")
print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none (CPU build)'}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        # native bf16 from compute capability 8.0 (Ampere); below it bf16 is emulated and AMP=auto
        # uses fp16
        print(f"gpu {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
              f"{props.major}.{props.minor}, "
              f"native bf16 {'yes' if props.major >= 8 else 'no (AMP auto: fp16)'}")
else:
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    print("gpu: none (CUDA not available)"
          + ("; Apple MPS is available" if mps else "; the scripts run on the CPU"))
for name in PACKAGES:
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        version = "NOT INSTALLED (pip install -r requirements.txt)"
    print(f"  {name:<13} {version}")
