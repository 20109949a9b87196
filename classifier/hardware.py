"""What the hardware and the launcher decide: precision, compilation, the CUDA backend flags, and the machine in
a few words for the record.

Precision and compilation are taken in this order: our own flag (`--mixed-precision`, `--compile` /
`--no-compile`), else what accelerate was told (`accelerate config`, `accelerate launch --mixed_precision ...`
or the ACCELERATE_* environment they set), else `auto`. `accelerate launch` always passes a precision to its
processes, "no" when it was told nothing, so that "no" counts as told only when the launcher's command line
or the config file it read says so.
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


def launcher_command() -> list[str] | None:
    """The command line of the `accelerate launch` this process runs under (its parent, or the parent's
    parent under torch's elastic agent), or None."""
    import psutil

    try:
        for process in psutil.Process().parents():
            command = process.cmdline()
            if is_accelerate_launch(command):
                return command
    except psutil.Error:
        return None
    return None


# a launcher's token in its parent's command line -> the name a user types
LAUNCHERS = {"accelerate": "accelerate launch", "accelerate-launch": "accelerate launch",
             "accelerate.commands.launch": "accelerate launch", "torchrun": "torchrun",
             "torch.distributed.run": "torchrun"}


def run_command(script_args: list[str], script: str = "train_accelerate.py") -> str:
    """The line that started this run, to repeat it: the `accelerate launch` or torchrun it runs under with that
    launcher's own options, else `python`. ACCELERATE_USE_CPU is written in front when accelerate did not set it
    itself, because with torchrun it decides CPU or GPU."""
    import psutil

    launcher = ["python"]
    try:
        for process in psutil.Process().parents():
            command = process.cmdline()
            names = [Path(part).name for part in command]
            if script not in names:
                continue
            at = names.index(script)
            start = next((i for i, name in enumerate(names[:at]) if name in LAUNCHERS
                          and (name != "accelerate" or names[i + 1:i + 2] == ["launch"])), None)
            if start is not None:
                skip = 2 if names[start] == "accelerate" else 1
                launcher = [*LAUNCHERS[names[start]].split(), *command[start + skip:at]]
            break
    except psutil.Error:
        pass
    line = shlex.join([*launcher, script, *script_args])
    if launcher[0] != "accelerate" and os.environ.get("ACCELERATE_USE_CPU"):
        line = f"ACCELERATE_USE_CPU={shlex.quote(os.environ['ACCELERATE_USE_CPU'])} {line}"
    return line


def is_accelerate_launch(command: list[str]) -> bool:
    names = [Path(part).name for part in command]
    return ("accelerate.commands.launch" in command or "accelerate-launch" in names
            or any(name == "accelerate" and rest[:1] == ["launch"] for name, rest in
                   ((names[i], command[i + 1:]) for i in range(len(command)))))


def launcher_says_precision(command: list[str]) -> bool:
    """Whether `accelerate launch` was told a precision: on its command line, or by the config file it read
    (any file `accelerate config` writes states one). It reads --config_file, else the default file unless --cpu."""
    if any(part == "--mixed_precision" or part.startswith("--mixed_precision=") for part in command):
        return True
    config = next((command[i + 1] for i, part in enumerate(command[:-1]) if part == "--config_file"),
                  next((part.split("=", 1)[1] for part in command if part.startswith("--config_file=")), None))
    if config is None and "--cpu" not in command:
        from accelerate.commands.config import default_config_file

        config = default_config_file if os.path.isfile(default_config_file) else None
    if config is None:
        return False
    from accelerate.commands.config import load_config_from_file

    return load_config_from_file(config).mixed_precision is not None


def accelerate_precision() -> str | None:
    """The precision accelerate was told for this process, or None where it was told nothing."""
    value = os.environ.get(PRECISION_ENV)
    if value is None:
        return None
    command = launcher_command()
    if command is None:  # set by hand, or by another launcher: said on purpose
        return value
    return value if launcher_says_precision(command) else None


def resolve_precision(flag: str | None, device_type: str) -> tuple[str, str]:
    """-> (the precision to train in, where it came from: FROM_FLAG, FROM_ACCELERATE or FROM_AUTO)"""
    if flag is not None and flag != "auto":
        return flag, FROM_FLAG
    told = None if flag == "auto" else accelerate_precision()
    if told is not None:
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
