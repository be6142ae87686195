"""Envelope addresses: is this string a mailbox SMTP can carry? (RFC 5321 §4.1.2, RFC 6531 §3.3)

Every address that reaches MAIL FROM or RCPT TO passes through here first, so a caller's mistake
is refused before a connection is asked for, and no address can split, truncate or extend a
command line on the wire.

The grammar (RFC 5321 §4.1.2, with the UTF8-non-ascii of RFC 6531 §3.3 in atext, qtextSMTP and
sub-domain)::

    Mailbox     = Local-part "@" ( Domain / address-literal )
    Local-part  = Dot-string / Quoted-string
    Dot-string  = Atom *("." Atom)                 ; Atom = 1*atext
    Domain      = sub-domain *("." sub-domain)     ; letters, digits, inner hyphens, or a U-label
    address-literal = "[" IPv4 / "IPv6:" IPv6 "]"

and the limits of RFC 5321 §4.5.3.1, in UTF-8 octets: local part 64, domain 255, path 256 with
its angle brackets (so 254 for the address). Two more values are accepted where the protocol
allows them: "" as the sender, the null reverse-path of bounces (§4.5.5), and "postmaster" in any
case as a recipient (§4.1.1.3).

Stricter than the grammar, on purpose:

* "<" and ">" are refused even inside a quoted local part, where the grammar allows them: a
  server that finds the end of the path at the first ">" would read the rest as parameters.
* A character `str.isprintable` rejects is refused anywhere: control characters (C0, DEL, C1,
  including U+0085 NEL), the line and paragraph separators U+2028 and U+2029, and invisible,
  private-use, unassigned or surrogate code points and non-ASCII spaces, which let two different
  addresses look the same and which a server may treat as line ends.
* Of the general address literals only "IPv6:" has ever been registered (§4.1.3), so any other
  tag is refused. A non-ASCII domain label is accepted as a U-label without IDNA2008's checks;
  the server resolves it.

The common address, ASCII atoms at an ASCII host name, is accepted by one precompiled regular
expression and a length test; only the rest walks the grammar, which also names the broken rule.
Error messages name the argument and the rule, never the address: addresses are personal data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ._errors import InvalidArgument

__all__ = ["check_recipient", "check_recipients", "check_sender", "domain_of", "mailbox_problem"]

# RFC 5321 §4.1.2 atext (RFC 5322 §3.2.3), ASCII part.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
# Let-dig [Ldh-str]: letters and digits, inner hyphens; written so that nothing backtracks.
_LABEL = r"[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*"
# The fast path: a dot-string of at most 64 characters, "@", a host name. The caller also checks
# the whole is at most 254 characters (RFC 5321 §4.5.3.1.3, the path less its brackets), which
# bounds the domain too. ASCII only, so characters are octets.
_PLAIN_MAILBOX = re.compile(
    rf"(?=[^@]{{1,64}}@)[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@{_LABEL}(?:\.{_LABEL})*"
)
_plain_mailbox = _PLAIN_MAILBOX.fullmatch
_MAX_ADDRESS = 254
_MAX_LOCAL_PART = 64
_MAX_DOMAIN = 255

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SEPARATOR = re.compile("[\u2028\u2029]")
# An ASCII character that is not atext and not ".": a space or one of RFC 5322's specials.
_NOT_DOT_STRING = re.compile(rf"[^{_ATEXT}.\x80-\U0010ffff]")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9\-\x80-\U0010ffff]")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}")


def check_sender(sender: object, argument: str = "sender") -> str:
    """`sender` if it is a mailbox or "" (the null reverse-path), else TypeError/InvalidArgument."""
    if type(sender) is str and len(sender) <= _MAX_ADDRESS and _plain_mailbox(sender):
        return sender
    if not isinstance(sender, str):
        raise TypeError(f"{argument}: expected str, got {type(sender).__name__}")
    if sender:
        _refuse_if_not_mailbox(sender, argument)
    return sender


def check_recipient(recipient: object, argument: str) -> str:
    """`recipient` if it is a mailbox or "postmaster", else TypeError/InvalidArgument."""
    if type(recipient) is str and len(recipient) <= _MAX_ADDRESS and _plain_mailbox(recipient):
        return recipient
    if not isinstance(recipient, str):
        raise TypeError(f"{argument}: expected str, got {type(recipient).__name__}")
    if not (recipient.isascii() and recipient.lower() == "postmaster"):
        _refuse_if_not_mailbox(recipient, argument)
    return recipient


def check_recipients(recipients: Sequence[object], argument_of: Callable[[int], str]) -> None:
    """`check_recipient` for each; `argument_of(index)` is only called off the fast path."""
    for index, recipient in enumerate(recipients):
        if (
            type(recipient) is not str
            or len(recipient) > _MAX_ADDRESS
            or not _plain_mailbox(recipient)
        ):
            check_recipient(recipient, argument_of(index))


def domain_of(address: str) -> str | None:
    """The domain (or address literal) of a checked mailbox; None for "" and "postmaster"."""
    # A quoted local part may hold "@"; the domain never does.
    at = address.rfind("@")
    return address[at + 1 :] if at >= 0 else None


def _refuse_if_not_mailbox(address: str, argument: str) -> None:
    problem = mailbox_problem(address)
    if problem is not None:
        raise InvalidArgument(f"the address {problem}", argument)


def mailbox_problem(address: str) -> str | None:
    """The first rule `address` breaks as a Mailbox (worded to follow "the address"), or None."""
    if not address:
        return "is empty"
    control = _CONTROL.search(address)
    if control is not None:
        return f"contains a control character ({_code_point(control.group())})"
    separator = _SEPARATOR.search(address)
    if separator is not None:
        return f"contains a line or paragraph separator ({_code_point(separator.group())})"
    if not address.isprintable():
        hidden = next(char for char in address if not char.isprintable())
        return f"contains an invisible, unassigned or surrogate character ({_code_point(hidden)})"
    if "<" in address or ">" in address:
        return "contains '<' or '>'"
    if address[0] == '"':
        end, problem = _quoted_string_end(address)
        if problem is not None:
            return problem
        local, domain = address[:end], address[end + 1 :]
        if address[end : end + 1] != "@":
            return "has no '@' right after its quoted local part"
    else:
        local, at, domain = address.partition("@")
        if not at:
            return "has no '@'"
        problem = _dot_string_problem(local)
        if problem is not None:
            return problem
    problem = _domain_problem(domain)
    if problem is not None:
        return problem
    if len(local.encode()) > _MAX_LOCAL_PART:
        return f"has a local part longer than {_MAX_LOCAL_PART} octets (RFC 5321 §4.5.3.1.1)"
    if len(domain.encode()) > _MAX_DOMAIN:
        return f"has a domain longer than {_MAX_DOMAIN} octets (RFC 5321 §4.5.3.1.2)"
    if len(address.encode()) > _MAX_ADDRESS:
        return "is longer than 256 octets as a path, with its angle brackets (RFC 5321 §4.5.3.1.3)"
    return None


def _code_point(char: str) -> str:
    return f"U+{ord(char):04X}"


def _quoted_string_end(address: str) -> tuple[int, str | None]:
    """Where the Quoted-string at the start of `address` ends (just after its closing quote).

    Characters were checked printable already, so every one but '"' and "\\" is qtextSMTP; a
    backslash quotes one printable ASCII character or a space (quoted-pairSMTP).
    """
    index, length = 1, len(address)
    while index < length:
        char = address[index]
        if char == '"':
            return index + 1, None
        if char == "\\":
            if not " " <= address[index + 1 : index + 2] <= "~":
                return 0, "has a backslash in its quoted local part that quotes no ASCII character"
            index += 1
        index += 1
    return 0, "has a quoted local part without its closing quote"


def _dot_string_problem(local: str) -> str | None:
    if not local:
        return "has an empty local part"
    if local[0] == "." or local[-1] == ".":
        return "has a local part that starts or ends with a dot"
    if ".." in local:
        return "has two dots in a row in its local part"
    special = _NOT_DOT_STRING.search(local)
    if special is None:
        return None
    if special.group() == " ":
        return "contains a space outside a quoted local part"
    return f"contains {special.group()!r} outside a quoted local part"


def _domain_problem(domain: str) -> str | None:
    if not domain:
        return "has an empty domain"
    if domain[0] == "[":
        if domain[-1] == "]" and _is_address_literal(domain[1:-1]):
            return None
        return "has a malformed address literal (an IPv4 or IPv6 address in brackets)"
    for label in domain.split("."):
        if not label:
            return "has an empty label in its domain (a dot at either end, or two in a row)"
        if label[0] == "-" or label[-1] == "-":
            return "has a domain label that starts or ends with a hyphen"
        wrong = _NOT_LABEL.search(label)
        if wrong is not None:
            return f"contains {wrong.group()!r} in its domain"
    return None


def _is_address_literal(literal: str) -> bool:
    if literal[:5].upper() == "IPV6:":
        return _is_ipv6(literal[5:])
    return _is_ipv4(literal)


def _is_ipv4(text: str) -> bool:
    # RFC 5321 §4.1.3: Snum = 1*3DIGIT, at most 255 (leading zeros allowed).
    parts = text.split(".")
    return len(parts) == 4 and all(
        0 < len(part) <= 3 and part.isascii() and part.isdigit() and int(part) <= 255
        for part in parts
    )


def _is_ipv6(text: str) -> bool:
    """RFC 5321 §4.1.3: IPv6-full, IPv6-comp, IPv6v4-full or IPv6v4-comp."""
    head, compressed, tail = text.partition("::")
    if "::" in tail:
        return False
    groups = head.split(":") if head else []
    later = tail.split(":") if tail else []
    if not compressed:
        groups, later = [], groups
    groups_allowed = 8
    if later and "." in later[-1]:
        # An IPv4 address may only end the literal, and takes the place of two groups.
        if not _is_ipv4(later.pop()):
            return False
        groups_allowed = 6
    groups += later
    if not all(_HEX_GROUP.fullmatch(group) for group in groups):
        return False
    if compressed:
        # "::" stands for at least two groups of zeros (RFC 5321 §4.1.3).
        return len(groups) <= groups_allowed - 2
    return len(groups) == groups_allowed
