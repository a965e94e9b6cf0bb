"""unlearnspec: validated YAML specs for attribution-guided unlearning experiments on LLMs."""

__version__ = "0.1.0"
