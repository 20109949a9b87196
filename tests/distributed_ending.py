"""Run by test_distributed.py under torchrun: process 1 ends the run alone (end_run, with an error no other process
has) while process 0 waits for it in a collective whose timeout is far away."""
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from classifier.distributed import end_run, process_group_kwargs

state = PartialState(parse_flag_from_env("ACCELERATE_USE_CPU"), **process_group_kwargs(600).to_kwargs())
if state.process_index == 1:
    end_run("process 1 failed alone")
state.wait_for_everyone()  # process 0: a barrier process 1 never reaches
