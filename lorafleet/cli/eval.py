"""`lorafleet eval` — placeholder until issue 6 lands."""

from lorafleet.cli.common import not_yet

app = not_yet("eval", 6)
