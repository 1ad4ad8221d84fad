"""lorafleet's BLEU as a Hugging Face `evaluate` module: evaluate.load(hf_modules.path("bleu"))
gives the numbers of `lorafleet eval score --metrics bleu`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class Bleu(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("bleu")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("bleu", predictions, references, **options)
