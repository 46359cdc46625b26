"""Exceptions raised by the CUDA emulator."""


class EmulatorError(RuntimeError):
    """Base class of the emulator's errors."""


class EmulatorCompileError(EmulatorError):
    """The host compiler rejected the kernel source; the message carries its diagnostics."""


class EmulatorLaunchError(EmulatorError):
    """A launch failed: invalid configuration, a failed kernel ``assert``/``__trap()``, misuse
    of a warp-synchronous intrinsic, or (``sanitize=True``) a sanitizer report, which is also
    available as the ``report`` attribute."""

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


class EmulatorKernelNotFoundError(EmulatorError, KeyError):
    """``get_function`` was asked for a name that is not an ``extern "C" __global__`` function
    of the module. Also a ``KeyError``, like a failed mapping lookup."""

    def __str__(self):
        # KeyError.__str__ would repr() the message.
        return str(self.args[0])
