"""Hardware claims that run here: precision and compilation taken from our flags, else accelerate's launcher or
config, else auto (real `accelerate launch` runs, the record read back); auto's choice on GPUs that emulate bf16;
the CUDA backend flags; an fp16 step the scaler skips; the GPU smoke check's own logic on the CPU; the bound and
the loop measured the same way."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classifier import hardware
from classifier.hardware import (auto_precision, configure_backends, launcher_words, resolve_precision,
                                 resolve_compile)

from .helpers import TEST_MODEL, reset_accelerate_state

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
ENV.pop("ACCELERATE_MIXED_PRECISION", None)
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
          "--dynamo_backend", "no"]
QUICK = ["--epochs", "1", "--img-size", "32", "--batch-size", "16", "--max-train-samples", "32",
         "--max-eval-samples", "16", "--no-pretrained", "--samples-per-class", "0", "--failure-samples", "0"]


def launched(launcher_options: list[str], our_options: list[str], dataset: Path, out: Path) -> dict:
    """train_accelerate.py under a real `accelerate launch`; -> training_args.json"""
    result = subprocess.run([*LAUNCH, *launcher_options, "train_accelerate.py", "--dataset", str(dataset),
                             "--output-dir", str(out), *QUICK, *our_options], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "training_args.json").read_text())


@pytest.mark.slow
def test_accelerate_launch_precision_is_used_unless_our_flag_says_otherwise(parquet_repo, tmp_path):
    told = launched(["--mixed_precision", "bf16"], [], parquet_repo, tmp_path / "told")
    assert told["resolved"]["mixed_precision_from"] == "accelerate"
    assert (told["resolved_mixed_precision"], told["compute_dtype"]) == ("bf16", "bfloat16")  # autocast took effect
    assert told["command"].startswith("accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no "
                                      "--mixed_precision bf16 train_accelerate.py --dataset ")

    ours = launched(["--mixed_precision", "bf16"], ["--mixed-precision", "no"], parquet_repo, tmp_path / "ours")
    assert ours["resolved"]["mixed_precision_from"] == "command line"
    assert (ours["resolved_mixed_precision"], ours["compute_dtype"]) == ("no", "float32")
    # resnet18's four strided convolutions (stem, first of layers 2-4) are guarded in bf16 on the CPU, none in fp32
    assert (told["resolved"]["fp32_on_one_pixel_maps"], ours["resolved"]["fp32_on_one_pixel_maps"]) == (4, 0)

    # a launcher told nothing passes its default "no": that is not a choice, so auto applies
    plain = launched([], [], parquet_repo, tmp_path / "plain")
    assert plain["resolved"]["mixed_precision_from"] == "auto"
    assert plain["resolved_mixed_precision"] == auto_precision("cpu")
    assert plain["compute_dtype"] == {"bf16": "bfloat16", "no": "float32"}[auto_precision("cpu")]


def test_a_strided_convolution_on_a_one_pixel_map_gets_its_true_gradient_under_bf16():
    # torch 2.14's CPU bf16 kernel returns garbage (often NaN) weight gradients for this shape in most calls, so
    # ten calls without the guard are practically sure to fail; with it they match float32's
    torch.manual_seed(0)
    for _ in range(10):
        conv = torch.nn.Conv2d(64, 128, 3, stride=2, padding=1, bias=False)
        reference = copy.deepcopy(conv)
        assert hardware.guard_bf16_cpu_convolutions(conv) == 1
        x = torch.randn(8, 64, 2, 1)  # a map one pixel wide, as layer4 meets at 16px
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x).square().mean().backward()
        reference(x).square().mean().backward()
        torch.testing.assert_close(conv.weight.grad, reference.weight.grad)
    # larger maps keep bf16 (the speed), and the state dict is a plain Conv2d's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(2, 64, 4, 4)).dtype == torch.bfloat16
    assert conv.state_dict().keys() == reference.state_dict().keys()


def test_the_recorded_launcher_is_the_one_a_user_types():
    launch = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--num_processes", "2"]
    assert launcher_words(launch + ["train_accelerate.py"]) == ["accelerate", "launch", "--num_processes", "2",
                                                                "train_accelerate.py"]
    assert launcher_words(["python", "-m", "accelerate.commands.launch", "x.py"]) == ["accelerate", "launch", "x.py"]
    assert launcher_words(["python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "x.py"]) == [
        "torchrun", "--nproc_per_node", "2", "x.py"]
    assert launcher_words(["/bin/bash", "-c", "python x.py"]) is None


@pytest.mark.parametrize("flag, environment, expected", [
    ("bf16", "fp16", ("bf16", "command line")),  # our flag wins
    ("no", "bf16", ("no", "command line")),  # and is how to force float32
    (None, "bf16", ("bf16", "accelerate")),  # accelerate's setting next
    (None, "no", ("auto", "auto")),  # accelerate launch's default "no" is not a choice
    (None, None, ("auto", "auto")),  # told nothing
    ("auto", "bf16", ("auto", "command line")),  # our auto wins over accelerate's setting
])
def test_precision_is_our_flag_else_accelerates_setting_else_auto(monkeypatch, flag, environment, expected):
    if environment is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", environment)
    want = auto_precision("cpu") if expected[0] == "auto" else expected[0]
    assert resolve_precision(flag, "cpu") == (want, expected[1])


def test_accelerate_reads_its_own_compile_setting_when_our_flag_is_absent(monkeypatch):
    from accelerate import Accelerator

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    for flag, backend in ((None, "INDUCTOR"), (False, "NO"), (True, "INDUCTOR")):
        reset_accelerate_state()
        accelerator = Accelerator(cpu=True, dynamo_backend=resolve_compile(flag))
        assert accelerator.state.dynamo_plugin.backend.value == backend, flag
    reset_accelerate_state()


def test_auto_uses_bf16_only_on_gpus_that_run_it_natively(monkeypatch):
    def gpu(native: bool):
        # torch's answer on a T4/V100 is yes unless emulation is excluded
        return lambda including_emulation=True: native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpu(native=False))
    assert auto_precision("cuda") == "fp16"  # accelerate adds the gradient scaler for fp16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", gpu(native=True))
    assert auto_precision("cuda") == "bf16"
    assert auto_precision("cpu") == ("bf16" if hardware.cpu_supports_bf16() else "no")
    assert auto_precision("xla") == "no"


@pytest.fixture
def backend_flags():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    yield
    matmul.fp32_precision, conv.fp32_precision = saved[0], saved[1]
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
    torch.use_deterministic_algorithms(saved[4])


def test_tf32_and_cudnn_autotuning_on_cuda_unless_deterministic(backend_flags):
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    assert configure_backends("cuda", deterministic=False) == {"deterministic": False, "tf32": True,
                                                               "cudnn_benchmark": True}
    assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == ("tf32", "tf32", True)
    configure_backends("cuda", deterministic=True)
    assert (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark) == ("ieee", "ieee", False)
    assert torch.backends.cudnn.deterministic and torch.are_deterministic_algorithms_enabled()


def test_a_step_the_fp16_scaler_skips_does_not_advance_the_schedule():
    """A real GradScaler (torch's CPU one, as accelerate's is on a GPU) whose scale overflows the loss."""
    from accelerate import Accelerator

    from classifier.engine import Recipe, train_step
    from classifier.options import parse_args
    from classifier.state import TrainState
    from classifier.train import build_optimizer, build_scheduler

    reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # loss x scale = inf
    args = parse_args(["--dataset", "x", "--img-size", "16", "--optimizer", "adamw", "--lr", "1e-3"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.zeros(1, 3, 16, 16))
    with torch.no_grad():
        model[2].weight *= 1e3  # large logits: a loss of hundreds, which the scale takes past float32's range
    optimizer = build_optimizer(args, model, torch.device("cpu"))  # fused, as training uses it
    scheduler = build_scheduler(args, optimizer, model, total_steps=10, steps_per_epoch=5)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState(model, optimizer, scheduler)
    recipe = Recipe.from_args(args, 4, (0.5,) * 3, (0.25,) * 3)
    images, labels = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) % 4
    before = [p.detach().clone() for p in model.parameters()]
    lr = scheduler.get_last_lr()

    train_step(state, recipe, accelerator, images, labels, 16, None)
    assert state.progress.skipped_steps == 1 and state.progress.optimizer_steps == 1
    assert scheduler.get_last_lr() == lr and scheduler.last_epoch == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no update either

    accelerator.scaler.update(2.0 ** 10)  # a scale that fits: the next step is taken
    train_step(state, recipe, accelerator, images, labels, 16, None)
    assert state.progress.skipped_steps == 1 and scheduler.last_epoch == 1
    reset_accelerate_state()


def gpu_smoke(dataset: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--device", "cpu", "--dataset",
                           str(dataset), "--steps", "4", "--batch-size", "16", "--img-size", "32", "--eval-samples",
                           "16", "--processes", "1", *options], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_gpu_smoke_check_tabulates_runs_and_fails_on_a_failed_run(parquet_repo):
    # 2 processes through `accelerate launch --multi_gpu --num_processes 2` on one machine (ACCELERATE_USE_CPU=1):
    # the smoke check's own record check fails a run whose training_args.json does not say 2 processes. (The one
    # process command is the failed run's below: each launch costs its processes' imports.)
    result = gpu_smoke(parquet_repo, "--configs", "bf16", "--processes", "2", "--train-args", " ".join(TEST_MODEL))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| bf16 | 2 |"))
    loop, bound, ratio, memory, loss, status = [c.strip() for c in row.strip("|").split("|")][2:]
    assert float(loop.split()[0]) > 0 and float(bound.split()[0]) > 0 and float(ratio.split()[0]) > 0
    assert (memory, status) == ("n/a", "ok") and float(loss) > 0
    assert "accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1" in result.stderr

    failed = gpu_smoke(parquet_repo, "--configs", "bf16", "--train-args", "--lr nan")  # --processes 1
    assert failed.returncode == 1
    assert "FAILED: exit 2: error: Loss became nan" in failed.stdout


def test_gpu_smoke_check_says_when_there_is_no_gpu(capsys):
    from benchmarks import gpu_smoke

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    assert gpu_smoke.main([]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_the_bound_and_the_loop_are_timed_in_the_same_windows(trained):
    from benchmarks.train_speed import Rate, loop_rate, timed_windows

    history = json.loads((trained / "metrics.json").read_text())["history"]
    for epoch in history:  # the loop's windows add up to its epoch
        assert sum(images for images, _ in epoch["windows"]) == 216 // 32 * 32
        assert sum(seconds for _, seconds in epoch["windows"]) == pytest.approx(epoch["seconds"])
    assert len(loop_rate(history).windows) == 1  # 6 batches an epoch: one window

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    model(torch.zeros(1, 3, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = ((torch.randn(4, 3, 8, 8), torch.arange(4)) for _ in range(100))
    rate = timed_windows(batches, model, optimizer, "no", torch.device("cpu"), warmup=5, steps=25)
    assert len(rate.windows) == 3  # 10 + 10 + 5 steps
    spread = Rate([90.0, 100.0, 120.0]).ratio(Rate([95.0, 100.0]))
    assert spread == "1.03 (0.90-1.26)"  # medians 100 and 97.5


def test_fixed_shape_random_erasing_draws_timms_boxes():
    """The erasing used off the CPU (XLA needs fixed shapes) draws the boxes timm's RandomErasing draws."""
    import random

    from timm.data.random_erasing import RandomErasing

    from classifier.augment import RandomErase

    torch.manual_seed(0), random.seed(0)
    ours = (RandomErase(1.0)(torch.zeros(4000, 3, 32, 32)) != 0)
    theirs = (RandomErasing(1.0, mode="pixel", device="cpu")(torch.zeros(4000, 3, 32, 32)) != 0)
    assert torch.equal(ours[:, 0], ours[:, 1])  # the same box on every channel
    share, timm_share = ours[:, 0].float().mean((1, 2)), theirs[:, 0].float().mean((1, 2))
    assert share.mean().item() == pytest.approx(timm_share.mean().item(), abs=0.005)  # 2-33 % of the area
    assert share.min() == timm_share.min() and share.max() == timm_share.max()
    for mask in ours[:50, 0]:  # one solid rectangle each
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        assert mask.sum() == len(rows) * len(cols)
    half = (RandomErase(0.5)(torch.zeros(4000, 1, 8, 8)) != 0).flatten(1).any(1).float().mean().item()
    assert half == pytest.approx(0.5, abs=0.03)
