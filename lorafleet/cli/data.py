"""`lorafleet data` — placeholder until issue 4 lands."""

from lorafleet.cli.common import not_yet

app = not_yet("data", 4)
