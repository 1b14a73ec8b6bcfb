"""File names that cannot be written as text, written escaped instead of failing.

A file name on Linux is bytes; Python decodes the bytes that are not UTF-8 (a folder copied from a Latin-1 system:
``caf\\xe9.jpg``) to lone surrogates (``surrogateescape``), which no encoding writes: a CSV file or a strict stdout
raised ``UnicodeEncodeError`` after the work was done. The ``"mdpr-escaped"`` error handler writes each such byte as
``\\xNN`` (``caf\\xe9.jpg``), and a character the output's encoding lacks (``é`` on an ASCII terminal) as Python's
``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``. Output files in text mode (:mod:`.output_files`), the tools' stdout and
stderr (:func:`escape_unwritable`) and the names drawn in pictures (:func:`escaped`) use it.
"""
import codecs

ESCAPED = "mdpr-escaped"  # the codec error handler's name, for open(..., errors=ESCAPED)
_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # the lone surrogates surrogateescape decodes the bytes 0x80-0xFF to


def _escape_character(character):
    code = ord(character)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return character.encode("ascii", "backslashreplace").decode("ascii")


def _escape_unencodable(error):
    if not isinstance(error, UnicodeEncodeError):
        raise error
    return "".join(map(_escape_character, error.object[error.start:error.end])), error.end


codecs.register_error(ESCAPED, _escape_unencodable)


def escaped(text):
    """``text`` with the bytes of a file name that are not UTF-8 as ``\\xNN``: what an output file shows of it."""
    return text.encode("utf-8", ESCAPED).decode("utf-8")


def escape_unwritable(stream):
    """Have a text stream (``sys.stdout``) write what its encoding cannot as escapes, rather than raise."""
    reconfigure = getattr(stream, "reconfigure", None)  # a replaced stream (pytest's capture) may not have it
    if reconfigure is not None:
        reconfigure(errors=ESCAPED)
