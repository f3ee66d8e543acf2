"""Errors a user can cause. The CLI prints them as one line and exits non-zero, no traceback."""


class UserError(Exception):
    """A mistake in the input that the user can fix; the message says how."""


class NonFiniteActivations(UserError):
    """A layer's activations held NaN or infinity: a scan can neither rank nor bin them."""


class ScanInterrupted(Exception):
    """A scan stopped by Ctrl-C after checkpointing; running the same command resumes it."""

    def __init__(self, scan_id: int, tokens_seen: int) -> None:
        super().__init__(f"scan {scan_id} interrupted after {tokens_seen:,} tokens")
        self.scan_id = scan_id
        self.tokens_seen = tokens_seen


class ScanAlreadyComplete(Exception):
    """The same scan (same model, corpus and settings) already finished: rerunning the command
    is not an error, and must not store a second copy."""

    def __init__(self, scan_id: int) -> None:
        super().__init__(
            f"scan {scan_id} with these settings is already complete; nothing to do "
            "(change --tokens, --seed or --layers to scan again)"
        )
        self.scan_id = scan_id
