"""What the hardware and the launcher decide: precision, compilation, the CUDA backend flags, and the machine in
a few words for the record.

Precision and compilation are taken in this order: our own flag (`--mixed-precision`, `--compile` /
`--no-compile`), else what accelerate was told (`accelerate config`, `accelerate launch --mixed_precision ...`
or the ACCELERATE_* environment they set), else `auto`. `accelerate launch` passes "no" to its processes when it
was told nothing, and nothing tells that default from a chosen "no": accelerate's "no" reads as unset, and
`--mixed-precision no` is how to train in float32.
"""
from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path

import torch

PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
FROM_FLAG, FROM_ACCELERATE, FROM_AUTO = "command line", "accelerate", "auto"


def cpu_supports_bf16() -> bool:
    """Native bf16 kernels (AVX-512 BF16 / AMX); without them bf16 autocast on CPU is slower than fp32."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cuda_supports_bf16() -> bool:
    # T4 and V100 run bf16 only emulated, slower than fp16: without including_emulation=False they answer yes
    return torch.cuda.is_bf16_supported(including_emulation=False)


def auto_precision(device_type: str) -> str:
    """bf16 where the device runs it natively, else fp16 with a gradient scaler on CUDA, else fp32 ("no")."""
    if device_type == "cuda":
        return "bf16" if cuda_supports_bf16() else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_supports_bf16() else "no"
    return "no"  # MPS, XLA, ...: fp32 unless asked


class OnePixelSafeConv2d(torch.nn.Conv2d):
    """A Conv2d that computes in float32 where PyTorch's CPU bf16 convolution gets its weight gradient wrong: a
    strided convolution with a kernel wider than 1 whose input map is one pixel wide (measured with torch 2.14:
    garbage, often NaN, in most backward passes; layer4's first convolution in resnet18 meets such a map below
    17px, which progressive resizing from 16px trains at). The forward pass is right; only training needs this,
    and only that one small map pays float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 1 in x.shape[-2:] and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def guard_bf16_cpu_convolutions(model: torch.nn.Module) -> int:
    """Make the model's strided convolutions OnePixelSafeConv2d (same weights and state dict); -> how many.
    Only plain nn.Conv2d: timm's own conv classes keep their forward."""
    guarded = 0
    for module in model.modules():
        if type(module) is torch.nn.Conv2d and max(module.stride) > 1 and max(module.kernel_size) > 1:
            module.__class__ = OnePixelSafeConv2d
            guarded += 1
    return guarded


def parent_command_lines():
    """The command lines of this process's parents, nearest first; stops where psutil may not read one."""
    import psutil

    try:
        for process in psutil.Process().parents():
            yield process.cmdline()
    except psutil.Error:
        return


def launcher_words(command: list[str]) -> list[str] | None:
    """`accelerate launch ...` or `torchrun ...` as a user types it, from a command line that runs one (the
    interpreter and paths in front dropped, the launcher's options and what follows kept); None for anything else."""
    names = [Path(part).name for part in command]
    for i, name in enumerate(names):
        if name == "accelerate" and names[i + 1:i + 2] == ["launch"]:
            return ["accelerate", "launch", *command[i + 2:]]
        if name in ("accelerate-launch", "accelerate.commands.launch"):
            return ["accelerate", "launch", *command[i + 1:]]
        if name in ("torchrun", "torch.distributed.run"):
            return ["torchrun", *command[i + 1:]]
    return None


def run_command(script_args: list[str], script: str = "train_accelerate.py") -> str:
    """The line that started this run, to repeat it: the `accelerate launch` or torchrun it runs under with that
    launcher's own options, else `python`. ACCELERATE_USE_CPU is written in front when accelerate did not set it
    itself, because with torchrun it decides CPU or GPU."""
    launcher = ["python"]
    for command in parent_command_lines():
        names = [Path(part).name for part in command]
        if script in names:  # the process that started the script: a launcher, or a shell or test running python
            launcher = launcher_words(command[:names.index(script)]) or launcher
            break
    line = shlex.join([*launcher, script, *script_args])
    if launcher[0] != "accelerate" and os.environ.get("ACCELERATE_USE_CPU"):
        line = f"ACCELERATE_USE_CPU={shlex.quote(os.environ['ACCELERATE_USE_CPU'])} {line}"
    return line


def resolve_precision(flag: str | None, device_type: str) -> tuple[str, str]:
    """-> (the precision to train in, where it came from: FROM_FLAG, FROM_ACCELERATE or FROM_AUTO)"""
    if flag is not None and flag != "auto":
        return flag, FROM_FLAG
    told = os.environ.get(PRECISION_ENV, "no").lower() if flag is None else "no"
    if told != "no":
        return told, FROM_ACCELERATE
    return auto_precision(device_type), FROM_FLAG if flag == "auto" else FROM_AUTO


def resolve_compile(flag: bool | None) -> str | None:
    """accelerate's dynamo backend: inductor or "no" from our flag; None lets accelerate read its own setting
    (ACCELERATE_DYNAMO_BACKEND from `accelerate config` / `accelerate launch --dynamo_backend`, default no)."""
    if flag is None:
        return None
    return "inductor" if flag else "no"


def configure_backends(device_type: str, deterministic: bool) -> dict:
    """On CUDA, as timm's train.py: TF32 for float32 matmuls and convolutions (Ampere and later: about 8x the
    float32 rate for a 10-bit mantissa, which training does not notice) and cudnn's autotuner (benchmark: the
    fastest convolution algorithm per input shape; our shapes are fixed, so it tunes once). `deterministic`
    turns both off and asks for deterministic algorithms instead (warnings, not errors, where an op has none).
    -> the settings, for the record."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device_type != "cuda":
        return {"deterministic": deterministic}
    fast = not deterministic
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; mixing in the legacy allow_tf32 flags is an error there
        matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32" if fast else "ieee"
    else:
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast
    torch.backends.cudnn.benchmark = fast
    torch.backends.cudnn.deterministic = deterministic
    return {"deterministic": deterministic, "tf32": fast, "cudnn_benchmark": fast}


def describe_hardware(device: torch.device) -> str:
    """The machine in a few words, so wall-clock figures can be read against it ("cpu: AMD EPYC, 2 threads")."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)} x{torch.cuda.device_count()}"
    if device.type != "cpu":
        return device.type
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    name = names[0] if names else platform.processor() or "unknown"
    return f"cpu: {name}, {torch.get_num_threads()} threads, {'bf16' if cpu_supports_bf16() else 'no bf16'}"
