"""The embedded toy world: names of its corpora, tasks and models (import-light registry)."""

TOY_CORPORA: tuple[str, ...] = ("wikitext", "bio_forget", "bio_retain", "ultrachat", "lie")
"""Toy analogues of WikiText-103, the WMDP bio forget/retain corpora, UltraChat and wmdp-lie-o."""

TOY_TASKS: tuple[str, ...] = ("toy_wmdp", "toy_mmlu")
"""Four-choice cloze tasks: forget domain (WMDP analogue) and retain domain (MMLU analogue)."""

TOY_MODELS: tuple[str, ...] = ("tiny-neox",)
"""Embedded GPT-NeoX models trained offline on the toy corpora."""
