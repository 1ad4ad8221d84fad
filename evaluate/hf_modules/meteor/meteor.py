"""lorafleet's METEOR as a Hugging Face `evaluate` module: evaluate.load(hf_modules.path("meteor"))
gives the numbers of `lorafleet eval score --metrics meteor`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class Meteor(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("meteor")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("meteor", predictions, references, **options)
