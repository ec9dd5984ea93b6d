"""Redaction applied when a dialog is archived (the live journal stays as written).

``ARCHIVER_REDACT=email,phone,card`` picks built-in patterns; ``ARCHIVER_REDACT_FILE``
adds one regex per line (``name: regex``, or a bare regex named ``custom``; ``#`` starts a
comment). Each match becomes ``[redacted:<name>]``. Card numbers must pass the Luhn check
and phone numbers must have 8 to 15 digits, so order numbers and dates survive.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUILTIN = ("email", "phone", "card")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# An optional +, then digits with spaces, dots, dashes or parentheses between them.
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\s().-]{0,2}\d){6,16}(?!\w)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _card(match: re.Match[str]) -> bool:
    return luhn_ok(_digits(match.group()))


_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")


def _phone(match: re.Match[str]) -> bool:
    text = match.group()
    return 8 <= len(_digits(text)) <= 15 and _DATE.fullmatch(text) is None


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None


_RULES = {
    "email": Rule("email", _EMAIL),
    "card": Rule("card", _CARD, _card),
    "phone": Rule("phone", _PHONE, _phone),
}


@dataclass(frozen=True)
class Redactor:
    rules: tuple[Rule, ...]

    @property
    def names(self) -> list[str]:
        return [rule.name for rule in self.rules]

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """``text`` with every match replaced, and how many of each kind were replaced."""
        found: Counter[str] = Counter()
        for rule in self.rules:

            def replace(match: re.Match[str], rule: Rule = rule) -> str:
                if rule.accept is not None and not rule.accept(match):
                    return match.group()
                found[rule.name] += 1
                return f"[redacted:{rule.name}]"

            text = rule.pattern.sub(replace, text)
        return text, found


class RedactConfigError(ValueError):
    pass


def load(names: tuple[str, ...], extra_file: Path | None) -> Redactor | None:
    """The redactor for ``ARCHIVER_REDACT`` and ``ARCHIVER_REDACT_FILE``, or None if off."""
    unknown = [name for name in names if name not in _RULES]
    if unknown:
        raise RedactConfigError(
            f"ARCHIVER_REDACT: unknown pattern {unknown[0]!r} (built-in: {', '.join(BUILTIN)})"
        )
    # Cards before phones: a card number would also look like a phone number.
    rules = [_RULES[name] for name in ("email", "card", "phone") if name in names]
    if extra_file is not None:
        rules += _rules_from_file(extra_file)
    return Redactor(tuple(rules)) if rules else None


def _rules_from_file(path: Path) -> list[Rule]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise RedactConfigError(
            f"ARCHIVER_REDACT_FILE: cannot read {path}: {exc.strerror}"
        ) from None
    rules = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, regex = line.partition(": ")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
            name, regex = "custom", line
        try:
            rules.append(Rule(name, re.compile(regex)))
        except re.error as exc:
            raise RedactConfigError(f"{path}:{number}: not a valid regex: {exc}") from None
    return rules
