"""Why a file ``torch.load`` refused will not load, said of the file: empty, cut off, a
plain pickle, a zip archive or anything else torch.save never wrote, a pickled object
besides tensors. torch's own words for these ("KeyError: 101", "Invalid magic number;
corrupt file?", a page advising ``weights_only=False``) say nothing of the file.

Apart from :mod:`basisconv.checkpoint`, which asks it of a checkpoint it cannot read
(:func:`~basisconv.checkpoint.load_checkpoint`): it reads the file's first bytes and
torch's error, nothing of a run.
"""

from __future__ import annotations

import errno
import pickle
import re
import zipfile
from pathlib import Path

from .errors import error_line, one_line

#: How a file torch.save wrote begins: a zip archive, or its legacy format's pickle (protocol
#: 2 and above; protocols 0 and 1 begin with torch's magic number as text).
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80", b"L119547037146038801333356")
#: torch's magic number as its legacy format pickles it first (a long, opcode LONG1), near
#: the start whatever the protocol: a pickle without it is no file torch.save wrote.
TORCH_PICKLED_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def unreadable_reason(path: Path, err: Exception) -> str:
    """Why ``torch.load`` could not read the file at ``path``, for a message. An empty or
    cut-off file (a copy that stopped part-way, loaded without a .sha256 to catch it) is
    said as such: torch reports it as ``EOFError`` with no text, as ``OSError: [Errno 22]
    Invalid argument``, which reads as a fault of the disk, or as a zip archive without
    its central directory (which a zip keeps at its end). A file torch.save never wrote
    (a text, a web page a download saved, a Git LFS pointer never pulled) is said by its
    first bytes: torch's words for it ("KeyError: 101") say nothing of the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        size = head = None
    if size == 0:
        return "it is empty"
    foreign = head is not None and foreign_format(path, head)
    if foreign:
        return foreign
    if isinstance(err, pickle.UnpicklingError):
        return unpickling_reason(err)
    if size is not None and (isinstance(err, EOFError)
                             or (isinstance(err, OSError) and err.errno == errno.EINVAL)
                             or "failed finding central directory" in str(err)):
        return f"it ends early, cut off at {size} bytes"
    return error_line(err)


def foreign_format(path: Path, head: bytes) -> str | None:
    """What a file torch.save never wrote is, by its first bytes ``head``, or None: a plain
    pickle (``pickle.dump``'s) or a zip archive of other files was said in torch's words,
    "Invalid magic number; corrupt file?", "Unsupported operand 149", "[enforce fail at
    inline_container.cc:180] . file in archive is not in a subdirectory" (found in
    review)."""
    if head.startswith(b"\x80") and not _begins_with_torch_magic(head):
        return "it is a Python pickle (pickle.dump's), not a file torch.save writes"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):  # cut off: said as such by the caller
            return None
        if not any(name.endswith("/data.pkl") for name in names):
            held = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            return (f"it is a zip archive that torch.save did not write: it holds "
                    f"{held or 'no file'} and no data.pkl")
        return None
    if not head.startswith(TORCH_FILE_STARTS):
        return f"it is not a file torch.save writes: it begins {head!r}"
    return None


def _begins_with_torch_magic(pickled: bytes) -> bool:
    """Whether a pickle's first value is torch's magic number, or could be: a legacy torch
    file cut off before its magic is whole (a copy that stopped at once) is torch's, cut
    off, not a plain pickle. The bytes after the protocol opcode (``\\x80`` and its number)
    and protocol 4's frame (``\\x95`` and an 8-byte length) are compared with the magic
    as far as they go."""
    body = pickled[2:]
    if body[:1] == b"\x95":
        body = body[9:]
    kept = min(len(body), len(TORCH_PICKLED_MAGIC))
    return body[:kept] == TORCH_PICKLED_MAGIC[:kept]


def unpickling_reason(err: pickle.UnpicklingError) -> str:
    """The line of torch's refusal to unpickle that says why (its text is a page long and
    advises ``weights_only=False``, which would run whatever the file holds)."""
    text = str(err)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return (f"it holds a Python object ({found.group(1)}) besides tensors and plain "
                f"values, which could run code as it is read")
    detail = re.search(r"WeightsUnpickler error:(.+?)(?:Check the documentation|$)", text, re.S)
    return f"UnpicklingError: {one_line(detail.group(1) if detail else text)}"
