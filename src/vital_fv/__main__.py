"""``python -m vital_fv`` and the ``vital`` command's entry point.

The command's own modules are imported inside ``run``, so a Ctrl-C while they load (the first fraction of a second)
ends as cleanly as one during the work: a short message and exit code 130, no traceback.
"""

import sys


def run() -> int:
    try:
        from .cli import console_main

        code = console_main()
    except KeyboardInterrupt:  # while the command's modules load, or one that outlived the command's own handling
        print("interrupted before any result was complete: nothing was written", file=sys.stderr)
        code = 130
    _forget_handled_interrupt()
    return code


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
