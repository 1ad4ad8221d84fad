"""Evaluation: YAML suites against any OpenAI endpoint, metrics with provenance, paired statistics,
CI gates and reports. Imports as `lorafleet.evaluate` (never a top-level `evaluate`)."""
