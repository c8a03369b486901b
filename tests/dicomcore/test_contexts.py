"""dicomcore.contexts: what is proposed to a peer for stored objects."""

from __future__ import annotations

from dicomcore.contexts import EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT
from dicomcore.contexts import IMPLICIT_VR_LITTLE_ENDIAN as IMPLICIT
from dicomcore.contexts import MAX_CONTEXTS, proposals

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
J2K, BIG_ENDIAN = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.2"


def uncompressed(ts: str) -> bool:
    return ts != J2K


def test_each_stored_pair_alone_then_the_fallbacks_it_lacks() -> None:
    stored = [(CT, EXPLICIT), (CT, J2K), (CT, EXPLICIT), (MR, J2K)]
    assert proposals(stored, uncompressed) == [
        (CT, [EXPLICIT]),
        (CT, [J2K]),
        (MR, [J2K]),
        (CT, [IMPLICIT]),  # CT has an uncompressed object; MR has none, so no fallback
    ]


def test_the_sender_decides_what_it_can_re_encode() -> None:
    stored = [(CT, BIG_ENDIAN)]
    assert proposals(stored, uncompressed) == [(CT, [BIG_ENDIAN]), (CT, [EXPLICIT, IMPLICIT])]
    assert proposals(stored, {EXPLICIT, IMPLICIT}.__contains__) == [(CT, [BIG_ENDIAN])]


def test_never_more_than_an_association_can_carry() -> None:
    stored = [(f"1.2.3.{i}", EXPLICIT) for i in range(200)]
    out = proposals(stored, uncompressed)
    assert len(out) == MAX_CONTEXTS and out == [(c, [EXPLICIT]) for c, _ in stored[:MAX_CONTEXTS]]
    few = proposals(stored[:100], uncompressed)
    assert len(few) == MAX_CONTEXTS and few[100:] == [(c, [IMPLICIT]) for c, _ in stored[:28]]
