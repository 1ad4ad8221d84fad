"""`lorafleet review` — placeholder until issue 7 lands."""

from lorafleet.cli.common import not_yet

app = not_yet("review", 7)
