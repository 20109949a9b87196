"""train_accelerate.py's options as parsed: names that must keep working, and what a mistake is told."""
import pytest

from classifier.options import parse_args


def test_the_linear_schedule_keeps_its_old_name_onecycle():
    """'onecycle' was the linear warm-up-and-decay schedule's first name; commands recorded with it still parse
    to the same schedule."""
    assert parse_args(["--dataset", "d", "--scheduler", "onecycle"]).scheduler == "linear"
    assert parse_args(["--dataset", "d"]).scheduler == "linear"
    assert parse_args(["--dataset", "d", "--scheduler", "cosine"]).scheduler == "cosine"


def test_a_usage_error_is_one_line_that_names_the_option_meant(capsys):
    for argv, said in (
            (["--dataset", "d", "--pretrained-files", "w.safetensors"],
             "error: unrecognized arguments: --pretrained-files w.safetensors; did you mean --pretrained-file? "
             "(--help lists every option)"),
            (["--dataset", "d", "--augmnt", "none", "--lrr=3"],
             "error: unrecognized arguments: --augmnt none --lrr=3; did you mean --augment for --augmnt, --lr for "
             "--lrr? (--help lists every option)"),
            (["--dataset", "d", "--zzzz"], "error: unrecognized arguments: --zzzz (--help lists every option)"),
            (["--datset", "d"], "error: the following arguments are required: --dataset; did you mean --dataset? "
             "(--help lists every option)"),
            (["--dataset", "d", "--min-img-size", "64", "--img-size", "32"], "error: --min-img-size must be between 1 "
             "and --img-size (32), got 64 (--help lists every option)")):
        with pytest.raises(SystemExit) as exited:
            parse_args(argv)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and err.splitlines() == [err.strip()] and err.strip().endswith(said), err


def test_the_command_that_repeats_a_resumed_run_does_not_resume():
    for resume in (["--resume", "latest"], ["--resume=latest"]):
        options = parse_args(["--dataset", "d", *resume, "--epochs", "3"])
        assert options.resume == "latest"
        assert options.command.endswith("train_accelerate.py --dataset d --epochs 3"), options.command


def test_sizes_and_counts_under_one_and_a_negative_lr_are_usage_errors(capsys):
    for option, value in (("--epochs", "0"), ("--batch-size", "0"), ("--img-size", "-5"),
                          ("--max-train-samples", "-3"), ("--max-eval-samples", "0"), ("--lr", "-1")):
        with pytest.raises(SystemExit) as exited:
            parse_args(["--dataset", "d", option, value])
        said = "0 or more" if option == "--lr" else "1 or more"
        assert exited.value.code == 2 and f"error: {option} must be {said}, got {value}" in capsys.readouterr().err
