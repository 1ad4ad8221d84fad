"""`lorafleet serve` — placeholder until issue 5 lands."""

from lorafleet.cli.common import not_yet

app = not_yet("serve", 5)
