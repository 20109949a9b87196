"""Two real CPU processes (torchrun, gloo): a run writes its folder once and records that two processes ran;
evaluation counts every sample once and equals one process; each process draws its own augmentation while
the data order is shared; a run is reproducible and resumes bit-identically after kill -9 (one test); a failure
on one process ends both promptly with one message; a rank killed outright ends the run within seconds.

`accelerate launch --num_processes 2 --cpu` would start ONE process (accelerate's simple launcher), so these
tests start torchrun with ACCELERATE_USE_CPU=1 and check from the run's own record that two processes ran."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import psutil
import pytest
import torch
from safetensors.torch import load_file

from classifier.data import memory_budget
from classifier.engine import train_batches

from .helpers import CLASSES, TEST_MODEL, make_examples

pytestmark = pytest.mark.slow  # torchrun and launcher processes

ROOT = Path(__file__).resolve().parents[1]
# one thread per process: the two processes share the machine's cores
ENV = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun(num_processes: int, *command, timeout: float = 300, threads_at_exit: Path | None = None
             ) -> subprocess.CompletedProcess:
    """`command` (a script and its arguments) on `num_processes` CPU processes of one machine; 1: plain python.
    With `threads_at_exit`, each process writes there the threads it still runs when it exits (see thread_names)."""
    launcher = LAUNCH if num_processes == 2 else [sys.executable]
    env = ENV
    if threads_at_exit:
        threads_at_exit.mkdir(parents=True, exist_ok=True)
        env = dict(ENV, THREADS_AT_EXIT=str(threads_at_exit),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "threads_at_exit"), str(ROOT)]))
    return subprocess.run([*launcher, *map(str, command)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def thread_names(folder: Path) -> dict[str, list[str]]:
    """The threads each training process (by rank) still ran as it exited (tests/threads_at_exit/sitecustomize.py)."""
    return {file.name.split("-")[0]: file.read_text().split("\n") for file in folder.glob("*.txt")
            if not file.name.startswith("launcher")}


def no_process_group_threads_at_exit(folder: Path) -> None:
    """A gloo thread still running as Python shuts down can abort the process (SIGABRT, "terminate called without
    an active exception"; docs/TRAINING.md): the process group's threads end before."""
    names = thread_names(folder)
    assert {rank: [n for n in threads if "gloo" in n] for rank, threads in names.items()} == {"0": [], "1": []}, names


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-12000:]
    return result


def same_weights(a: Path, b: Path) -> None:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


SMALL_MODEL = [*TEST_MODEL, "--no-pretrained"]
# every random part of the recipe on: each must draw per process and still reproduce
RECIPE = ["--epochs", "2", "--img-size", "32", "--batch-size", "16", "--eval-batch-size", "16", *SMALL_MODEL,
          "--mixed-precision", "no", "--augment", "strong", "--random-erase", "0.5", "--mixup", "0.2",
          "--cutmix", "1.0", "--drop-rate", "0.2", "--samples-per-class", "2", "--data-workers", "1"]
# 216 training images (240 less the carved validation split) / (2 x 16): 6 steps an epoch, 12 in all
CHECKPOINTS = ["--checkpoint-every", "4", "--checkpoint-limit", "5"]


@pytest.fixture(scope="module")
def two_process_run(parquet_repo, tmp_path_factory):
    """(command arguments without --output-dir, the model folder, the launch's stdout)"""
    args = ["train_accelerate.py", "--dataset", parquet_repo, *RECIPE, *CHECKPOINTS]
    out = tmp_path_factory.mktemp("two_processes") / "model"
    result = succeeded(torchrun(2, *args, "--output-dir", out, threads_at_exit=out.parent / "threads"))
    return args, out, result.stdout


def test_two_processes_train_and_count_each_sample_once(two_process_run, parquet_repo, tmp_path):
    _, out, stdout = two_process_run
    no_process_group_threads_at_exit(out.parent / "threads")
    record = json.loads((out / "training_args.json").read_text())
    assert (record["num_processes"], record["distributed_type"]) == (2, "MULTI_CPU")
    # the line that repeats it names the launcher that started two processes, and the setting that made them CPU
    assert record["command"].startswith("ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 "
                                        "train_accelerate.py --dataset ")
    assert "Trained on 2 processes (accelerate MULTI_CPU)" in (out / "README.md").read_text()
    # `auto`'s memory budget is shared by the machine's two processes, and process 1 read the cache process 0 wrote
    budget, sources = record["resolved"]["data_path_budget"], record["resolved"]["data_sources"]
    assert budget["local_processes"] == 2 and budget["bytes_per_process"] == memory_budget(torch.device("cpu")) // 2
    assert len(sources) == 2 and sources[1] == {"train": "cache", "validation": "cache", "test": "cache"}
    # two processes of 16 make a global batch of 32: the generic recipe's SGD lr (for 128) follows it linearly
    assert record["resolved"]["lr"] == {"base": 0.1, "applied": pytest.approx(0.025), "rule": "linear",
                                        "global_batch": 32, "reference_batch": 128}
    # (written by one process only: accelerate's print shows one process's lines here whatever happens; the two
    # machines' test below counts it over both)
    assert {"config.json", "model.safetensors", "metrics.json", "README.md"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    # 60 test images are not a multiple of 2 processes x 16: the last batch is padded and must be dropped
    assert metrics["final"]["num_samples"] == 60
    assert sum(metrics["final"]["per_class"]["support"]) == 60

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = Path("tests") / "distributed_eval.py"
    succeeded(torchrun(1, script, out, parquet_repo, one, 16))
    # one launch, two batch sizes: 16, and 7: 9 batches, so process 1's last one is wrapped-around padding, not a
    # short batch
    succeeded(torchrun(2, script, out, parquet_repo, two, "16,7", threads_at_exit=tmp_path / "threads"))
    no_process_group_threads_at_exit(tmp_path / "threads")
    single, doubles = json.loads(one.read_text())["16"], json.loads(two.read_text())
    assert doubles.keys() == {"16", "7"}
    for double in doubles.values():
        assert (single["num_processes"], double["num_processes"]) == (1, 2)
        assert single["num_samples"] == double["num_samples"] == 60
        for key in ("accuracy", "precision", "recall", "f1", "mcc", "confusion_matrix", "per_class"):
            assert single[key] == double[key], key
        assert single["roc_auc"] == pytest.approx(double["roc_auc"], abs=1e-6)
        assert single["loss"] == pytest.approx(double["loss"], rel=1e-5)


def test_each_process_draws_its_own_augmentation_but_the_data_order_is_shared(parquet_repo, tmp_path):
    """Also: the training statistics the loop logs are reduced over both processes."""
    report = tmp_path / "draws.json"
    succeeded(torchrun(2, Path("tests") / "distributed_augment.py", report, "--dataset", parquet_repo,
                       "--output-dir", tmp_path / "unused", *RECIPE, threads_at_exit=tmp_path / "threads"))
    no_process_group_threads_at_exit(tmp_path / "threads")
    draws = json.loads(report.read_text())
    assert draws["num_processes"] == 2
    parts = {"shift_flip", "trivial_augment", "random_erase", "mixup_cutmix", "dropout"}
    assert draws["differs"] == dict.fromkeys(parts, True)  # the same images, drawn differently per process
    assert draws["repeatable"] == dict.fromkeys(parts, True)  # and the same again from the same seed
    assert draws["first_batch_differs"]
    assert draws["eval_outputs_equal"]  # one set of weights: dropout is what differed
    # the data order is not drawn per process: both take disjoint slices of one permutation fixed by --seed
    n, batch = draws["train_size"], draws["batch_size"]
    rank0, rank1 = draws["epoch_0_batches"]
    assert rank0 == [b.tolist() for b in train_batches(n, batch, 0, 0, 0, 2)]
    assert rank1 == [b.tolist() for b in train_batches(n, batch, 0, 0, 1, 2)]
    seen = [i for b in rank0 + rank1 for i in b]
    assert len(seen) == len(set(seen)) == n // (2 * batch) * 2 * batch
    # process r added a loss of r + 1, r + 3 correct of 10 + r images
    assert draws["window"] == {"losses": [1.5], "running": {"loss": 1.5, "correct": 7, "seen": 21}}


def test_kill_9_of_two_processes_then_resume_latest_is_bit_identical(two_process_run, tmp_path):
    """Also the reproducibility test: the killed run repeats the first 8 steps of the fixture's run on its own, so
    the weights come out equal only if two launches of the same command train alike."""
    args, uninterrupted, _ = two_process_run
    out = tmp_path / "killed"
    launcher = subprocess.Popen([*LAUNCH, *map(str, args), "--output-dir", str(out)], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000008").exists():  # mid-epoch 2
        assert launcher.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    # the workers run in sessions of their own: kill them and the launcher at once, as a crash would
    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    assert len(processes) >= 3
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=30)
    assert not (out / "config.json").exists()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".partial"))
    assert kept == ["step_00000004", "step_00000008"], kept

    checkpoint = json.loads((out / "checkpoints" / "step_00000008" / "training_state.json").read_text())
    assert checkpoint["num_processes"] == 2 and checkpoint["progress"]["batches_done"] == 2
    result = succeeded(torchrun(2, *args, "--output-dir", out, "--resume", "latest"))
    # from step 8, mid-epoch 2: a kill that came late would have left step 12, the last, and proved less
    assert "step_00000008 (epoch 2, batch 2)." in result.stdout, result.stdout
    same_weights(uninterrupted, out)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert json.loads((out / "training_args.json").read_text())["num_processes"] == 2
    # one process cannot continue an epoch two processes shared out between them
    refused = torchrun(1, *args, "--output-dir", out, "--resume", out / "checkpoints" / "step_00000008")
    assert refused.returncode == 2 and "saved mid-epoch by 2 process(es)" in refused.stderr


# -- a failure on one process ends both

def png(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


# 64 training images, batches of 16 on 2 processes: row 40 is in process 1's first batch
TRAIN_SIZE, BAD_ROW = 64, int(train_batches(64, 16, 0, 0, rank=1, world=2)[0][0])


@pytest.fixture(scope="module")
def broken_train_split(tmp_path_factory) -> Path:
    """train / validation / test, where one training image is not an image."""
    folder = tmp_path_factory.mktemp("broken")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    for split, per_class, seed in (("train", TRAIN_SIZE // 4, 7), ("validation", 3, 8), ("test", 3, 9)):
        examples = make_examples(per_class, seed)
        images = [{"bytes": png(image), "path": None} for image, _ in examples]
        if split == "train":
            images[BAD_ROW] = {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": "broken.png"}
        ds = datasets.Dataset.from_dict({"image": images, "label": [label for _, label in examples]},
                                        features=features)
        (folder / "data").mkdir(exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def stops_together(dataset: Path, out: Path, *options: str) -> str:
    """Run two processes that must fail; -> the one error line, once all assertions on how they stopped hold."""
    started = time.time()
    result = torchrun(2, "train_accelerate.py", "--dataset", dataset, "--output-dir", out, "--epochs", "1",
                      "--img-size", "32", "--batch-size", "16", *SMALL_MODEL, "--data-workers", "1", *options,
                      timeout=240)
    output = result.stdout + result.stderr
    assert time.time() - started < 180  # no process waited for a collective's timeout
    assert result.returncode == 1, output[-3000:]  # torchrun's own status when a process fails
    assert result.stderr.count("exitcode  : 2") == 2  # each process's status: the 2 of a one-process run
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output[-3000:]  # printed once, by the main process
    assert output.count("Traceback") == 1 and "ChildFailedError" in output  # torchrun's report, none from a process
    assert not (out / "config.json").exists()
    return errors[0]


def test_non_finite_loss_stops_both_processes(parquet_repo, tmp_path):
    error = stops_together(parquet_repo, tmp_path / "out", "--lr", "nan")
    assert "Loss became nan at epoch 1, batch 1" in error


def test_undecodable_image_streamed_on_the_other_process_stops_both(broken_train_split, tmp_path):
    error = stops_together(broken_train_split, tmp_path / "out", "--data-path", "stream")
    assert f"decode train: row {BAD_ROW} (broken.png)" in error and "--skip-bad-images" in error


def test_data_error_while_the_main_process_fills_the_cache_stops_both(broken_train_split, tmp_path):
    error = stops_together(broken_train_split, tmp_path / "out", "--data-path", "memory")
    assert f"decode train: row {BAD_ROW} (broken.png)" in error


def test_a_process_that_fails_alone_ends_the_run_with_its_own_line():
    """Process 1 ends the run with an error process 0 does not have, while process 0 waits for it in a collective
    (timeout 600 s): process 1 waits a few seconds for the others to end too, finds nobody, prints its line, and
    the launcher ends the run."""
    started = time.time()
    result = torchrun(2, "tests/distributed_ending.py", timeout=120)
    output = result.stdout + result.stderr
    assert time.time() - started < 60, output[-3000:]  # not the collective's 600 s
    assert result.returncode == 1 and "exitcode  : 2" in result.stderr, output[-3000:]
    assert [line for line in output.splitlines() if line.startswith("error: ")] == ["error: process 1 failed alone"]


def training_under_way(dataset: Path, out: Path, *options: str):
    """A long 2-process run, once both ranks have trained 4 steps; -> (the launcher, every process under it, the
    training processes by rank)."""
    command = [*LAUNCH, "train_accelerate.py", "--dataset", str(dataset), "--output-dir", str(out), "--epochs", "50",
               "--img-size", "32", "--batch-size", "16", *SMALL_MODEL, "--data-workers", "1",
               "--samples-per-class", "0", "--checkpoint-every", "2", *options]
    launcher = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000004").exists():
        assert launcher.poll() is None and time.time() < deadline, "the run ended before it was under way"
        time.sleep(0.05)
    workers = psutil.Process(launcher.pid).children(recursive=True)
    ranks = {int(p.environ()["RANK"]): p for p in workers
             if "RANK" in p.environ() and "train_accelerate.py" in " ".join(p.cmdline())}
    assert set(ranks) == {0, 1}, ranks
    return launcher, workers, ranks


def test_a_rank_killed_while_the_other_waits_in_a_collective_ends_the_run(parquet_repo, tmp_path):
    """Rank 1 is SIGKILLed mid-training; rank 0 is then waiting for it in the next reduction. The launcher ends
    the run within seconds (not the collective's timeout), every process is gone, and the report names the killed
    rank once."""
    out = tmp_path / "model"
    launcher, workers, ranks = training_under_way(parquet_repo, out, "--collective-timeout", "600")
    killed_at = time.time()
    ranks[1].send_signal(signal.SIGKILL)
    stdout, stderr = launcher.communicate(timeout=120)
    ended_after = time.time() - killed_at
    assert ended_after < 60, f"the run took {ended_after:.0f} s to end"  # far below the collective's 600
    assert launcher.returncode != 0
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    report = stdout + stderr
    assert report.count("Signal 9 (SIGKILL) received by PID") == 1, report[-3000:]
    assert not (out / "config.json").exists()


def test_a_rank_that_stops_answering_ends_the_run_after_the_collective_timeout(parquet_repo, tmp_path):
    """Rank 1 is frozen (SIGSTOP) mid-training: rank 0 waits for it in the next reduction, which times out after
    --collective-timeout (15 s here; 10 minutes by default, where it was the 2-hour --ddp-timeout), and the run
    ends with one line saying so."""
    out = tmp_path / "model"
    launcher, workers, ranks = training_under_way(parquet_repo, out, "--collective-timeout", "15")
    frozen_at = time.time()
    ranks[1].send_signal(signal.SIGSTOP)
    outputs = []
    reader = threading.Thread(target=lambda: outputs.extend(launcher.communicate(timeout=240)))
    reader.start()  # the pipes are read while we wait
    try:
        ranks[0].wait(timeout=240)
        ended_after = time.time() - frozen_at
        # torchrun then SIGTERMs the frozen process and gives it 30 s before a SIGKILL (in torch 2.14 its
        # --shutdown_timeout does not reach this path): those 30 s are torchrun's, so once the SIGTERM is pending,
        # the process is let go to take it
        deadline = time.time() + 60
        while not sigterm_pending(ranks[1]) and time.time() < deadline:
            time.sleep(0.05)
        ranks[1].send_signal(signal.SIGCONT)
        reader.join(timeout=240)
    finally:
        for process in workers:
            if process.is_running():
                process.kill()
    stdout, stderr = outputs
    assert 15 <= ended_after < 120, f"process 0 ended {ended_after:.0f} s after the freeze"
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: A collective timed out after --collective-timeout 15 s: another process is stuck or "
                      f"gone. Checkpoints in {out / 'checkpoints'} (if any) hold the last saved state."], stderr[-3000:]
    assert launcher.returncode != 0 and not (out / "config.json").exists()


def sigterm_pending(process: psutil.Process) -> bool:
    """Whether a SIGTERM waits to be delivered to `process` (a stopped process takes none)."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:  # gone
        return True
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)


def test_two_machines_on_loopback_train_as_one_run(parquet_repo, tmp_path):
    """The 2-machine launch line of README's "Launching" and docs/TRAINING.md (accelerate launch --multi_gpu
    --num_machines 2 --machine_rank R --main_process_ip --main_process_port), both "machines" on this one over
    loopback with one CPU process each (ACCELERATE_USE_CPU=1): the wiring across machines, not a network or GPUs."""
    from .helpers import free_port

    port = free_port()
    out = tmp_path / "model"
    launchers = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2", "--machine_rank",
         str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2",
         "--mixed_precision", "no", "--dynamo_backend", "no", "train_accelerate.py", "--dataset", str(parquet_repo),
         "--output-dir", str(out), "--epochs", "1", "--img-size", "32", "--batch-size", "16", "--max-train-samples",
         "64", "--max-eval-samples", "16", *SMALL_MODEL, "--samples-per-class", "0", "--failure-samples", "0"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [launcher.communicate(timeout=300) for launcher in launchers]
    for launcher, (stdout, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]
    record = json.loads((out / "training_args.json").read_text())
    assert (record["num_processes"], record["num_machines"], record["distributed_type"]) == (2, 2, "MULTI_CPU")
    assert "2 processes on 2 machines" in (out / "README.md").read_text()
    assert sum(stdout.count("Model folder:") for stdout, _ in outputs) == 1  # machine 0's main process wrote it
