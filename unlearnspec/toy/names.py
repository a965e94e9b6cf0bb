"""The names the toy world offers to specs (corpora, tasks, models): a leaf module, so the toy modules and the
plug-in read them without importing the package (whose import registers the world)."""

TOY_CORPORA: tuple[str, ...] = ("wikitext", "bio_forget", "bio_retain", "ultrachat", "lie")
"""Toy analogues of WikiText-103, the WMDP bio forget/retain corpora, UltraChat and wmdp-lie-o."""

TOY_TASKS: tuple[str, ...] = ("toy_wmdp", "toy_mmlu")
"""Four-choice cloze tasks: forget domain (WMDP analogue) and retain domain (MMLU analogue)."""

TOY_MODELS: tuple[str, ...] = ("tiny-neox",)
"""Embedded GPT-NeoX models trained offline on the toy corpora."""

DAMAGED_FIX = (
    "The cached toy world is damaged: rebuild it with `unlearnspec toy build --force`, or clear $UNLEARNSPEC_CACHE."
)
"""What to do when the cached toy world cannot be read."""
