"""Document loader of the toy lm-eval tasks, copied verbatim as `utils.py` into each toy task folder.

lm-eval resolves relative `data_files` against the current directory, so the task YAML names this
loader (`custom_dataset: !function utils.load_docs`) and the JSONL is read next to this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets


def load_docs(data_file: str, **_metadata: object) -> datasets.DatasetDict:
    """The task's docs as a one-split DatasetDict; lm-eval also passes task metadata (ignored)."""
    path = Path(__file__).resolve().parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
