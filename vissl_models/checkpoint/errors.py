"""The checkpoint error type, in its own module so every checkpoint module can import it."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, understood or loaded; the message names the file."""


__all__ = ["CheckpointError"]
