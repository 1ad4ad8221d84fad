"""`lorafleet train` — placeholder until issue 4 lands."""

from lorafleet.cli.common import not_yet

app = not_yet("train", 4)
