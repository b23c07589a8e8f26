#!/usr/bin/env python3
"""A log writer for the rotation tests: appends numbered lines as fast as it can.

Usage: log_writer.py LOG PID_FILE [--dies-on-hup]
Each line is one write(2) in append mode, so a line is never split. SIGHUP makes it reopen
LOG (as daemons do after a rotation); SIGTERM makes it stop and print how many lines it
wrote. The pid file is written, atomically, only once both handlers are installed.
With --dies-on-hup SIGHUP keeps its default action, as in a server without a handler for it
(Apantli under uvicorn): the process dies.
"""
import os
import signal
import sys

log_path, pid_path = sys.argv[1], sys.argv[2]
reopen = False
stop = False


def on_hup(_signum, _frame):
    global reopen
    reopen = True


def on_term(_signum, _frame):
    global stop
    stop = True


if "--dies-on-hup" in sys.argv[3:]:
    # Explicitly: an ignored SIGHUP would be inherited from whoever started us.
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
else:
    signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGTERM, on_term)


def open_log():
    return os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)


fd = open_log()
with open(pid_path + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pid_path + ".tmp", pid_path)

n = 0
while not stop:
    if reopen:
        reopen = False
        os.close(fd)
        fd = open_log()
    os.write(fd, b"%d\n" % n)
    n += 1
os.close(fd)
print(n, flush=True)
