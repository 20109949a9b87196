"""Imported at start-up by every Python process whose PYTHONPATH names this folder (a launch in
test_distributed.py): when the process exits normally, just before the interpreter shuts down (atexit), it writes the
names of its native threads still running, one per line, to $THREADS_AT_EXIT/<RANK>-<pid>.txt (RANK: torchrun's, or
"launcher"). A gloo thread still running then can abort the process during the shutdown (docs/TRAINING.md).
"""
import atexit
import os


def _write_thread_names():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                names.append(comm.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    folder = os.environ["THREADS_AT_EXIT"]
    with open(os.path.join(folder, f"{os.environ.get('RANK', 'launcher')}-{os.getpid()}.txt"), "w") as out:
        out.write("\n".join(names))


if os.environ.get("THREADS_AT_EXIT"):
    atexit.register(_write_thread_names)
