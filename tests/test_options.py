"""train_accelerate.py's options as parsed: names that must keep working."""
from classifier.options import parse_args


def test_the_linear_schedule_keeps_its_old_name_onecycle():
    """'onecycle' was the linear warm-up-and-decay schedule's first name; commands recorded with it still parse
    to the same schedule."""
    assert parse_args(["--dataset", "d", "--scheduler", "onecycle"]).scheduler == "linear"
    assert parse_args(["--dataset", "d"]).scheduler == "linear"
    assert parse_args(["--dataset", "d", "--scheduler", "cosine"]).scheduler == "cosine"
