"""Served ≠ trained? The comparison behind the fidelity check, without torch.

The engine (vLLM) decodes each probe greedily and reports the logprob of every token it chose; the
reference (HF + PEFT on the same base) is teacher-forced on exactly those tokens. Per generated position:
agreement = the reference's argmax is the engine's token; |Δ| = |engine logprob − reference logprob|.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.errors import RegistryError


class Tolerance(BaseModel):
    """Registration passes when both hold."""

    model_config = ConfigDict(extra="forbid")

    min_agreement: float = Field(description="Least share of positions where the reference's argmax is "
                                             "the engine's token.")
    max_mean_abs_diff: float = Field(description="Largest mean |Δ logprob| (nats) over the generated tokens.")


# Measured (benchmarks/fidelity.py, docs/benchmarks.md): 5 adapters (the demo's support-intents, ticket-summaries,
# contract-clauses and two fixed-answer test adapters), 6 probes x <= 24 greedy tokens each, served right and served
# wrong (alpha x2, lora_B rows permuted, lora_B zeroed). Served right: mean |Δ| 0.0000 in a float32 engine and at
# most 0.0101 in bfloat16 (max |Δ| 0.14), agreement >= 0.991. Served wrong: mean |Δ| >= 0.478 (alpha x2 on the
# pirate adapter) and agreement <= 0.909. Mean |Δ| is what separates them; its limit sits ~5x under the smallest
# wrong serving and 10x over bf16's worst rounding. Agreement >= 0.9 is a floor for short probes, where one
# near-tie flip is already 5% of 20 tokens.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(min_agreement=0.9, max_mean_abs_diff=0.05),
    "bfloat16": Tolerance(min_agreement=0.9, max_mean_abs_diff=0.1),
    "float16": Tolerance(min_agreement=0.9, max_mean_abs_diff=0.1),
}


def tolerance_for(dtype: str) -> Tolerance:
    """The limit for an engine dtype; an unknown one gets the loosest (bf16's)."""
    return TOLERANCES.get(dtype, TOLERANCES["bfloat16"])


class ProbeResult(BaseModel):
    """One probe: what the engine generated and what each side gave those tokens."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int
    tokens: list[int]
    engine_logprobs: list[float]
    reference_logprobs: list[float]
    reference_argmax: list[int]


class Fidelity(BaseModel):
    """What the card records under `fidelity`."""

    model_config = ConfigDict(extra="forbid")

    token_agreement: float
    max_abs_logprob_diff: float
    mean_abs_logprob_diff: float
    prompts: int
    tokens: int
    engine: str = Field(description="started (a vLLM child for the check) or the reused engine's URL.")
    engine_dtype: str
    reference: str = "HF transformers + PEFT, float32, teacher-forced on the engine's tokens"
    base: str = Field(description="The base folder both sides ran on (the one the adapter is served on).")
    probes: str = Field(description="Where the probe prompts came from (val data or fixed).")
    tolerance: Tolerance
    passed: bool
    forced: bool = False
    seconds: dict[str, float] = Field(default_factory=dict, description="engine_start, check, total.")
    worst: list[str] = Field(default_factory=list, description="The positions with the largest |Δ|.")


def compare(probes: list[ProbeResult]) -> tuple[float, float, float, int]:
    """(token agreement, max |Δ|, mean |Δ|, tokens) over every generated position of every probe."""
    diffs: list[float] = []
    agree = 0
    for p in probes:
        if not (len(p.tokens) == len(p.engine_logprobs) == len(p.reference_logprobs) == len(p.reference_argmax)):
            raise ValueError("a probe's token, logprob and argmax lists differ in length")
        diffs += [abs(e - r) for e, r in zip(p.engine_logprobs, p.reference_logprobs, strict=True)]
        agree += sum(t == a for t, a in zip(p.tokens, p.reference_argmax, strict=True))
    if not diffs:
        raise RegistryError("the fidelity check got no generated tokens to compare",
                            hint="the engine stopped at once on every probe; give probes with a longer answer")
    return agree / len(diffs), max(diffs), sum(diffs) / len(diffs), len(diffs)


def judge(results: list[ProbeResult], tolerance: Tolerance, **fields: object) -> Fidelity:
    """The card's record for these probes under `tolerance` (`fields`: engine, base, probes, …)."""
    agreement, worst, mean, n = compare(results)
    passed = agreement >= tolerance.min_agreement and mean <= tolerance.max_mean_abs_diff
    return Fidelity(token_agreement=round(agreement, 4), max_abs_logprob_diff=round(worst, 4),
                    mean_abs_logprob_diff=round(mean, 5), prompts=len(results), tokens=n, tolerance=tolerance,
                    passed=passed, worst=worst_positions(results), **fields)  # type: ignore[arg-type]


def worst_positions(probes: list[ProbeResult], k: int = 3) -> list[str]:
    """`probe 2 token 5: engine -0.10 vs reference -2.31` for the k largest |Δ|."""
    rows = [(abs(e - r), i, j, e, r) for i, p in enumerate(probes)
            for j, (e, r) in enumerate(zip(p.engine_logprobs, p.reference_logprobs, strict=True))]
    return [f"probe {i} token {j}: engine {e:.3f} vs reference {r:.3f}"
            for _, i, j, e, r in sorted(rows, reverse=True)[:k]]


def refusal(result: Fidelity, what: str) -> RegistryError:
    """The error that refuses registration, naming the numbers and the way out."""
    tol = result.tolerance
    return RegistryError(
        f"{what}: served output does not match training (fidelity check, {result.prompts} prompts, "
        f"{result.tokens} tokens, engine {result.engine_dtype}): token agreement {result.token_agreement:.3f} "
        f"(needs >= {tol.min_agreement}), mean |Δ logprob| {result.mean_abs_logprob_diff:.4f} "
        f"(needs <= {tol.max_mean_abs_diff}), max {result.max_abs_logprob_diff:.3f}; nothing was registered",
        hint="the engine does not apply this adapter as PEFT does (wrong base, scaling or module mapping); "
             "check the base and adapter_config.json, or pass --force to register anyway (recorded on the card)",
    )
