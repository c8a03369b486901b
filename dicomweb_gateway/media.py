"""Media types: parsing Content-Type and Accept headers (RFC 9110 8.3, 12.5.1).

DICOMweb puts meaning in parameters (type=, transfer-syntax=, boundary=), so
parameters are parsed properly, quoted or not, rather than by substring."""

from __future__ import annotations

from dataclasses import dataclass, field

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART_RELATED = "multipart/related"


class MediaTypeError(ValueError):
    """A header value that is not a media type."""


class RepeatedParameter(MediaTypeError):
    """A media type that gives one parameter twice: which one counts is
    ambiguous (two boundaries would split the body two ways)."""


@dataclass(frozen=True)
class MediaType:
    type: str  # e.g. "multipart"
    subtype: str  # e.g. "related"
    # Parameter names lower-cased, values unquoted and case preserved.
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"

    def matches(self, essence: str) -> bool:
        """Whether this (possibly wildcard) range covers the concrete type."""
        main, _, sub = essence.partition("/")
        return self.type in ("*", main) and self.subtype in ("*", sub)


def _split(value: str, sep: str) -> list[str]:
    """Splits on `sep` outside double-quoted strings."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        result: list[str] = []
        escaped = False
        for ch in inner:
            if ch == "\\" and not escaped:
                escaped = True
                continue
            escaped = False
            result.append(ch)
        return "".join(result)
    return value


def parse_media_type(value: str) -> MediaType:
    head, *raw_params = _split(value, ";")
    main, slash, sub = head.strip().lower().partition("/")
    if not slash or not main or not sub or " " in main or " " in sub:
        raise MediaTypeError(f"'{value[:80]}' is not a media type")
    params: dict[str, str] = {}
    q = 1.0
    for raw in raw_params:
        if not raw.strip():
            continue
        name, eq, val = raw.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise MediaTypeError(f"malformed parameter '{raw.strip()[:40]}' in '{value[:80]}'")
        if name == "q":
            try:
                q = float(val.strip())
            except ValueError:
                raise MediaTypeError(f"malformed quality value in '{value[:80]}'") from None
            continue
        if name in params:
            raise RepeatedParameter(f"the '{name}' parameter is given more than once in '{value[:80]}'")
        params[name] = _unquote(val)
    return MediaType(main, sub, params, q)


def parse_accept(value: str | None) -> list[MediaType]:
    """Accept header ranges, highest quality first (ties keep header order).

    An absent or empty header means "anything" (RFC 9110 12.5.1). Ranges with
    q=0 are dropped: they say "not this"."""
    if value is None or not value.strip():
        return [MediaType("*", "*")]
    try:
        ranges = [parse_media_type(item) for item in _split(value, ",") if item.strip()]
    except MediaTypeError as exc:  # the app answers it with a 400 naming the header
        raise MediaTypeError(f"Accept: {exc}") from None
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)
