"""Input shape checks: each names the field and the rule, before the
database sees the value.  Semantic rules (limits, ownership, plans) live in
the database triggers; these only make sure a value is well-formed."""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
import unicodedata
import zoneinfo

import phonenumbers

from ..errors import DustelError

_E164 = re.compile(r"\+[1-9][0-9]{5,14}")
_NATIONAL = re.compile(r"0[1-9][0-9]{4,13}")
_AREA = re.compile(r"0?([2-9][0-9]{1,4})")
_USERNAME = re.compile(r"000387[0-9]{6}")
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_DIGITS = re.compile(r"[0-9]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+")


def edge(field: str, value: str) -> str:
    """The one rule every text that enters dustel meets first, whatever the
    field (CLI options and arguments, CSV imports, later the API): no
    control, format, surrogate, private or unassigned character and no line
    or paragraph separator — NUL (which PostgreSQL's text refuses), CR, LF,
    tab, NEL (U+0085), U+2028, a right-to-left override.  Each field's own
    rule (a name, a number, an IBAN …) comes after."""
    for ch in value:
        if _off_edge(ch):
            raise DustelError(field, f"must not contain control characters or line breaks (U+{ord(ch):04X})")
    return value


def _off_edge(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return cat[0] == "C" or cat in ("Zl", "Zp")


def shown(value: str) -> str:
    """A text on one line as a person reads it: a character the edge rule
    refuses (one stored before the rule, e.g. by an earlier statement
    import) shown as its escape (``\\n``, ``\\x85``, ``\\u2028``), never raw."""
    if not any(map(_off_edge, value)):
        return value
    return "".join(ch.encode("unicode_escape").decode("ascii") if _off_edge(ch) else ch for ch in value)


def text(field: str, value: str, *, max_len: int, min_len: int = 1) -> str:
    """Free text (names): printable Unicode, no control characters."""
    value = unicodedata.normalize("NFC", value.strip())
    if len(value) < min_len:
        raise DustelError(field, "must not be empty" if min_len == 1 else f"at least {min_len} characters")
    if len(value) > max_len:
        raise DustelError(field, f"at most {max_len} characters")
    for ch in value:
        if unicodedata.category(ch)[0] == "C":
            raise DustelError(field, "must not contain control or invisible characters")
    return value


def e164(field: str, value: str, plan: bool = True) -> str:
    """A phone number in E.164 (+49…); a German national number (0211…) is
    converted.  The number must exist in its country's numbering plan as
    libphonenumber knows it (valid ranges and lengths) unless ``plan`` is
    False (a block's head, whose members are checked instead)."""
    v = value.strip().replace(" ", "").replace("-", "").replace("/", "")
    if v.startswith("00") and v[2:].isascii() and v[2:].isdigit():
        v = "+" + v[2:]
    elif _NATIONAL.fullmatch(v):
        v = "+49" + v[1:]
    if not _E164.fullmatch(v):
        raise DustelError(field, "must be a phone number in E.164 form (+49211…) or German national form (0211…)")
    if plan and not phonenumbers.is_valid_number(_parse(v)):
        raise DustelError(field, f"{v} is not a number of its country's numbering plan (no such range or length)")
    return v


def _parse(e164_: str) -> phonenumbers.PhoneNumber:
    try:
        return phonenumbers.parse(e164_)
    except phonenumbers.NumberParseException:
        return phonenumbers.PhoneNumber()


# libphonenumber files 032 (national subscriber numbers) as fixed line with an
# "area code" of 32; the Bundesnetzagentur's plan has it non-geographic
_NON_GEOGRAPHIC = ("32",)
_FIXED = (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


def geographic_area(e164_: str) -> str | None:
    """The area code (without the 0) of a German geographic number, None
    for every other number (mobile, service, foreign …): libphonenumber's
    reading of the numbering plan."""
    x = _parse(e164_)
    if x.country_code != 49 or not phonenumbers.is_valid_number(x) or phonenumbers.number_type(x) not in _FIXED:
        return None
    n = phonenumbers.length_of_geographical_area_code(x)
    area = phonenumbers.national_significant_number(x)[:n] if n else ""
    return area if area and area not in _NON_GEOGRAPHIC else None


def number_kind(e164_: str) -> str:
    """geographic | mobile | service (free, premium, shared cost, personal,
    national, VoIP, UAN …) | foreign — what a German number is."""
    x = _parse(e164_)
    if x.country_code != 49:
        return "foreign"
    if geographic_area(e164_):
        return "geographic"
    return "mobile" if phonenumbers.number_type(x) == phonenumbers.PhoneNumberType.MOBILE else "service"


def area_code(field: str, value: str) -> str:
    """German area code without the trunk 0 (0211 and 211 both give '211'):
    one that libphonenumber knows as the area code of geographic numbers."""
    m = _AREA.fullmatch(value.strip())
    if m:
        area = m.group(1)
        for length in range(3, 9):       # a subscriber part of some length makes a number of that area
            number = "+49" + area + "2" * length
            if geographic_area(number) == area:
                return area
    raise DustelError(field, "must be a German area code of geographic numbers (e.g. 0211, 030, 02151); "
                             f"{value.strip()!r} is none")


def postcode(field: str, value: str) -> str:
    v = value.strip()
    if not re.fullmatch(r"[0-9]{5}", v):
        raise DustelError(field, "must be a German postcode of 5 digits")
    return v


def username(field: str, value: str) -> str:
    v = value.strip()
    if not _USERNAME.fullmatch(v):
        raise DustelError(field, "must be a SIP username: 000387 followed by 6 digits")
    return v


def slug(field: str, value: str) -> str:
    v = value.strip()
    if not _SLUG.fullmatch(v):
        raise DustelError(field, "must be 1-32 characters a-z, 0-9, '_' or '-', starting with a letter or digit")
    return v


def digits(field: str, value: str, *, min_len: int = 1, max_len: int = 6) -> str:
    v = value.strip()
    if not (_DIGITS.fullmatch(v) and min_len <= len(v) <= max_len):
        raise DustelError(field, f"must be {min_len} to {max_len} digits 0-9")
    return v


def email(field: str, value: str) -> str:
    v = value.strip()
    if not _EMAIL.fullmatch(v):
        raise DustelError(field, "must be an e-mail address (name@example.org)")
    return v


def domain(field: str, value: str) -> str:
    v = value.strip().lower()
    if len(v) > 200 or not _DOMAIN.fullmatch(v):
        raise DustelError(field, "must be a DNS name of letters, digits and '-' (e.g. acme.sip.dustel.de)")
    return v


def timezone(field: str, value: str) -> str:
    v = value.strip()
    if len(v) > 64 or not re.fullmatch(r"[A-Za-z_]+(/[A-Za-z0-9_+-]+){0,2}", v):
        raise DustelError(field, "must be an IANA time zone such as Europe/Berlin")
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise DustelError(field, f"unknown time zone {v!r}") from None
    return v


def date(field: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise DustelError(field, "must be a date YYYY-MM-DD") from None


def money_cents(field: str, value: str) -> int:
    """Euros as text (12, 12.5, 12.50) to integer cents; never through float."""
    m = re.fullmatch(r"([0-9]{1,9})(?:[.,]([0-9]{1,2}))?", value.strip())
    if not m:
        if re.fullmatch(r"\s*-\s*[0-9]+(?:[.,][0-9]*)?\s*", value):
            raise DustelError(field, "must not be negative")
        raise DustelError(field, "must be an amount in EUR such as 50 or 49.90")
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def networks(field: str, values: list[str]) -> list[str]:
    out = []
    for raw in values:
        try:
            net = ipaddress.ip_network(raw.strip(), strict=True)
        except ValueError:
            raise DustelError(field, f"{raw!r} is not an IP address or CIDR network (host bits must be zero)") from None
        out.append(str(net))
    if len(out) > 20:
        raise DustelError(field, "at most 20 networks")
    return sorted(set(out), key=lambda n: (ipaddress.ip_network(n).version, ipaddress.ip_network(n)))


def password(field: str, value: str) -> str:
    """SIP password: 12-128 printable ASCII characters without spaces, with a
    letter and a digit.  The value is never echoed in a message."""
    if not (12 <= len(value) <= 128):
        raise DustelError(field, "must be 12 to 128 characters")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise DustelError(field, "must be printable ASCII without spaces")
    if not (any(c.isalpha() for c in value) and any(c.isdigit() for c in value)):
        raise DustelError(field, "must contain a letter and a digit")
    return value


def screening_pattern(field: str, value: str) -> str:
    """'anonymous', an E.164 number, or an E.164 prefix ending in '*'."""
    v = value.strip()
    if v.lower() == "anonymous":
        return "anonymous"
    star = v.endswith("*")
    body = v[:-1] if star else v
    if star and re.fullmatch(r"\+[0-9]{1,15}", body):
        return body + "*"
    if star and re.fullmatch(r"0[0-9]{0,14}", body):
        return "+49" + body[1:] + "*" if len(body) > 1 else "+49*"
    return e164(field, v)
