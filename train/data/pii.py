"""PII finders: e-mail, phone, card numbers (Luhn-checked), IBAN (mod-97-checked), API-key-like strings."""

from __future__ import annotations

import re

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
PHONE = re.compile(r"(?<![\w#])\+?\d[\d ()-]{7,}\d\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{2}[./]\d{2}[./]\d{4}\b")
API_KEY = re.compile(r"\b(?:sk|pk|rk|api|key|token|ghp|xox[bp])[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{16,}\b"
                     r"|\bAKIA[0-9A-Z]{16}\b")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def find_pii(text: str) -> list[str]:
    """Kinds of PII in `text` (each kind once), e.g. ['email', 'card']."""
    kinds = []
    if EMAIL.search(text):
        kinds.append("email")
    cards = [m.group() for m in CARD.finditer(text)]
    if any(luhn_ok(re.sub(r"\D", "", c)) for c in cards):
        kinds.append("card")
    if any(iban_ok(m.group()) for m in IBAN.finditer(text)):
        kinds.append("iban")
    if API_KEY.search(text):
        kinds.append("api_key")
    undated = DATE.sub(" ", text)  # 2024-01-02 is not a phone number
    phones = [m.group() for m in PHONE.finditer(undated)]
    if any(9 <= len(re.sub(r"\D", "", p)) <= 15 and p not in " ".join(cards) for p in phones):
        kinds.append("phone")
    return kinds
