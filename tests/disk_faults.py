"""A full disk, simulated for the tests of atomic saves (checkpoint_format.save_file writes through
os.fdopen, so patching it is enough)."""

import errno
import os


def disk_full_after(limit):
    """An os.fdopen whose files write `limit` bytes, then fail as a full disk does."""
    real_fdopen = os.fdopen
    written = [0]

    class DiskFull:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            data = memoryview(data).cast("B")
            room = max(limit - written[0], 0)
            self.file.write(data[:room])
            written[0] += min(room, len(data))
            if len(data) > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return len(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    return (lambda fd, mode: DiskFull(real_fdopen(fd, mode))), written
