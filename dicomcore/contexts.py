"""Presentation contexts to propose when sending stored objects to a peer
(C-MOVE and the console's send on the DIMSE edge, routing on the event bus).

One context per stored (SOP class, transfer syntax) with that syntax alone,
so a peer that accepts it gets the object as stored, whatever syntax it
prefers; then, while there is room, one per SOP class with the uncompressed
syntaxes it is not stored in, to fall back on (the sender re-encodes), when
the sender can re-encode one of its stored syntaxes. Compressed objects are
never decoded to be sent, so they get no fallback."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
FALLBACK_SYNTAXES = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# An association proposes at most 128 presentation contexts (PS3.8 7.1.1.13: IDs are odd, 1-255).
MAX_CONTEXTS = 128


def proposals(stored: Iterable[tuple[str, str]], re_encodable: Callable[[str], bool]) -> list[tuple[str, list[str]]]:
    """(SOP class, transfer syntaxes) per context to propose for objects
    stored as `stored` (SOP class, transfer syntax) pairs; `re_encodable`
    says whether the sender can re-encode a stored syntax to the fallbacks."""
    pairs = list(dict.fromkeys(stored))
    out = [(sop_class, [ts]) for sop_class, ts in pairs[:MAX_CONTEXTS]]
    by_class: dict[str, set[str]] = defaultdict(set)
    for sop_class, ts in pairs:
        by_class[sop_class].add(ts)
    for sop_class, syntaxes in by_class.items():
        others = [ts for ts in FALLBACK_SYNTAXES if ts not in syntaxes]
        if len(out) < MAX_CONTEXTS and others and any(re_encodable(ts) for ts in syntaxes):
            out.append((sop_class, others))
    return out
