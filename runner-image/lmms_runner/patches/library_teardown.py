"""The process ends once the interpreter's exit is done, without the libraries' teardown.

After the interpreter's own exit (the atexit handlers run, every Python object finalized,
every file Python holds flushed and closed), the C and C++ libraries loaded by the run
(torch's operator registry, CUDA's contexts) run their destructors, which only give back
memory and handles that the kernel reclaims anyway. ``skip_library_teardown`` registers,
with the C library's ``on_exit``, a flush and close of the C stdio streams (``fcloseall``)
followed by ``_exit`` with the interpreter's exit status, so the process ends right there.
On a shared node that is CPU the pods of a fan-out would otherwise all spend in the same
last second.
"""

from __future__ import annotations

import ctypes

#: The lmms-eval versions (and the libraries they load) this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})


def skip_library_teardown() -> bool:
    """Ends the process as soon as the interpreter has finished its own exit, with its
    exit status, after the C stdio streams are flushed and closed. False where the C
    library has no ``on_exit`` (glibc has)."""
    try:
        libc = ctypes.CDLL(None)
        on_exit, end, flush = libc.on_exit, libc._exit, libc.fcloseall
    except (OSError, AttributeError):
        return False
    on_exit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    on_exit.restype = ctypes.c_int
    # exit() calls these last-registered first, each as handler(status, NULL): fcloseall
    # ignores both, then _exit(status) ends the process with the interpreter's status.
    if on_exit(ctypes.cast(end, ctypes.c_void_p), None) != 0:
        return False
    on_exit(ctypes.cast(flush, ctypes.c_void_p), None)
    return True
