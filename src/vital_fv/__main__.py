"""``python -m vital_fv`` and the ``vital`` command's entry point.

The command's own modules are imported inside ``run``, so a Ctrl-C or SIGTERM while they load (the first seconds)
ends as cleanly as one during the work: a short message and exit code 130 / 143, no traceback. During torch's
import a stop is only recorded and acted on once the import is complete (see ``signals.deferred_stops``).
"""

import signal
import sys

STOPPED = "interrupted before any result was complete: nothing was written"


def run() -> int:
    stops: list[int] = []
    try:
        from .signals import deferred_stops

        with deferred_stops(stops):  # torch's import runs C++ that a raising signal handler would abort (-6)
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        if stops:
            raise KeyboardInterrupt
        from .cli import console_main

        code = console_main()
    except KeyboardInterrupt:  # while the command's modules load, or one that outlived the command's own handling
        print(STOPPED, file=sys.stderr)
        code = _exit_code(stops) if stops else 130
    _forget_handled_interrupt()
    return code


def _exit_code(stops: list[int]) -> int:
    return 143 if signal.SIGTERM in stops else 130


def _forget_handled_interrupt() -> None:
    """A Ctrl-C that lands in code an extension runs through ``PyRun_*`` (pybind11's exec, during torch's import)
    sets CPython's ``_Py_UnhandledKeyboardInterrupt`` although the command then handled it; at exit CPython would
    kill the process with SIGINT (status -2) instead of returning our exit code. The stop was handled: clear it."""
    try:
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (ImportError, AttributeError, ValueError, OSError):  # another interpreter, or a CPython without it
        pass


if __name__ == "__main__":
    raise SystemExit(run())
