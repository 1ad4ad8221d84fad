"""lorafleet: one base model, many LoRA adapters, and the loop that makes them good."""

__version__ = "0.1.0"
