"""Value representations that an object leaves implicit, looked up the way
pydicom looks them up (its public dictionary, repeating groups, and its
private dictionary under the element's private creator), with the answers
cached: the parser asks once per tag, not once per element."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, private_dictionary_VR

# Tags (or creator and tag) seen so far; bounded so that a stream of objects
# full of odd private tags cannot grow them without end.
_CACHE_LIMIT = 100_000
_public: dict[int, str | None] = {}
_private: dict[tuple[str, int], str] = {}


def public_vr(tag: int) -> str | None:
    """The VR of a public (or repeating group) tag, None when pydicom does not know it."""
    try:
        return _public[tag]
    except KeyError:
        pass
    try:
        vr: str | None = str(dictionary_VR(tag))
    except KeyError:
        vr = None
    if len(_public) < _CACHE_LIMIT:
        _public[tag] = vr
    return vr


def private_vr(tag: int, creator: str | None) -> str:
    """The VR of a private tag as pydicom gives it (hooks._private_vr_for_tag):
    LO for a private creator, the private dictionary's VR under `creator`, else UN."""
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"
    if not creator or not (element & 0xFF00):
        return "UN"
    key = (creator, tag)
    try:
        return _private[key]
    except KeyError:
        pass
    try:
        vr = str(private_dictionary_VR(tag, creator))
    except KeyError:
        vr = "UN"
    if len(_private) < _CACHE_LIMIT:
        _private[key] = vr
    return vr


def implicit_vr(tag: int, creator: str | None) -> str:
    """The VR pydicom gives an element read without one (hooks.raw_element_vr),
    in lenient mode: an unknown public tag is UN, a group length UL."""
    vr = public_vr(tag)
    if vr is not None:
        return vr
    if tag & 0x10000:
        return private_vr(tag, creator)
    if tag & 0xFFFF == 0:
        return "UL"
    return "UN"


_KEYWORDS: dict[str, int] = {}


def tag_for(key: str | int) -> int:
    """A tag from a keyword ("PatientID"), an 8-hex-digit string or an int."""
    if isinstance(key, int):
        return key
    try:
        return _KEYWORDS[key]
    except KeyError:
        pass
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(key)
    if tag is None:
        try:
            tag = int(key, 16) if len(key) == 8 else None
        except ValueError:
            tag = None
    if tag is None:
        raise KeyError(f"not a DICOM keyword or tag: {key!r}")
    _KEYWORDS[key] = tag
    return tag
