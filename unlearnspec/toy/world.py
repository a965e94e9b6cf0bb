"""Generate the toy world from a `WorldConfig`: facts, the five corpora with fact spans, and the two
cloze tasks. Pure Python and deterministic: the same config gives byte-identical output anywhere.

Facts are (entity, attribute, value) triples. Every row records where each stated value sits in its
text (`facts`: [{fact, start, end, correct}]) so attribution benchmarks can find the answer tokens.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

from unlearnspec.toy.config import WorldConfig
from unlearnspec.toy.grammar import (
    _ANIMALS,
    _CHAT_CLOSERS,
    _CODAS,
    _COLOURS,
    _FOLLOWUPS,
    _FOODS,
    _GEO,
    _GOODS,
    _HABITATS,
    _METHODS,
    _ONSETS,
    _PROFESSIONS,
    _REGIONS,
    _ROUTES,
    _VOWELS,
    _WIKI_PREFIXES,
    KINDS,
)
from unlearnspec.toy.names import TOY_CORPORA, TOY_TASKS

GENERATOR_VERSION = 1
"""Bump when templates or generation logic change: it is part of the world's cache key."""


@dataclass(frozen=True)
class Fact:
    id: str
    domain: str
    kind: str
    entity: str
    attribute: str
    value: str
    lie: str
    """The fixed wrong value the `lie` corpus states for this fact."""
    weight: float
    """Relative frequency with which passages state this fact."""
    stem: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain": self.domain,
            "kind": self.kind,
            "entity": self.entity,
            "attribute": self.attribute,
            "value": self.value,
            "lie": self.lie,
            "weight": self.weight,
            "stem": self.stem,
        }


@dataclass(frozen=True)
class World:
    config: WorldConfig
    facts: tuple[Fact, ...]
    corpora: dict[str, list[dict[str, Any]]]
    tasks: dict[str, list[dict[str, Any]]]

    def fact(self, fact_id: str) -> Fact:
        return self._by_id[fact_id]

    @cached_property
    def _by_id(self) -> dict[str, Fact]:
        return {f.id: f for f in self.facts}


# --------------------------------------------------------------------------- deterministic randomness
def _rng(seed: int, *labels: str) -> random.Random:
    """An independent stream per purpose, derived with sha256 (never Python's salted `hash`)."""
    digest = hashlib.sha256(":".join([str(seed), *labels]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class _Namer:
    """Invented, unique words from syllables."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int, capital: bool = False) -> str:
        for _ in range(10_000):
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)
            ) + self.rng.choice(_CODAS)
            if len(w) >= 4 and w not in self.used:
                self.used.add(w)
                return w.capitalize() if capital else w
        raise RuntimeError("name space exhausted; lower the entity counts")


def _pool(namer: _Namer, kind: str, attribute: str, size: int, places: Sequence[str]) -> list[str]:
    """The value pool of one attribute: invented combinations (forget domain) or plain words."""
    rng = namer.rng
    if (kind, attribute) == ("person", "birthplace"):
        return list(places[: min(size, len(places))])
    if (kind, attribute) == ("person", "year"):
        return [str(y) for y in sorted(rng.sample(range(1200, 1900), size))]
    plain = {
        ("person", "profession"): _PROFESSIONS,
        ("place", "trade"): _GOODS,
        ("organism", "habitat"): _HABITATS,
        ("organism", "diet"): _FOODS,
        ("organism", "colour"): _COLOURS,
    }
    if (kind, attribute) in plain:
        words = list(plain[(kind, attribute)])
        rng.shuffle(words)
        return words[:size]
    makers = {
        ("pathogen", "host"): lambda: f"{namer.word(2)} {rng.choice(_ANIMALS)}",
        ("pathogen", "transmission"): lambda: f"{namer.word(2)} {rng.choice(_ROUTES)}",
        ("pathogen", "technique"): lambda: f"{namer.word(2)} {rng.choice(_METHODS)}",
        ("pathogen", "origin"): lambda: f"the {namer.word(2, capital=True)} {rng.choice(_GEO)}",
        ("pathogen", "toxin"): lambda: namer.word(2) + "in",
        ("place", "region"): lambda: f"the {namer.word(2, capital=True)} {rng.choice(_REGIONS)}",
        ("place", "river"): lambda: namer.word(2, capital=True),
    }
    return [makers[(kind, attribute)]() for _ in range(size)]


def _entity_names(namer: _Namer, kind: str, count: int) -> list[str]:
    if kind == "person":
        return [f"{namer.word(2, capital=True)} {namer.word(2, capital=True)}" for _ in range(count)]
    if kind == "organism":
        suffixes = ("wort", "fin", "moth", "fern", "crab", "snail", "lily", "shrike")
        return [namer.word(2, capital=True) + namer.rng.choice(suffixes) for _ in range(count)]
    return [namer.word(2 + (namer.rng.random() < 0.3), capital=True) for _ in range(count)]


# --------------------------------------------------------------------------- facts
def _make_facts(cfg: WorldConfig) -> tuple[Fact, ...]:
    namer = _Namer(_rng(cfg.seed, "names"))
    counts = {
        "pathogen": cfg.entities.pathogens,
        "person": cfg.entities.people,
        "place": cfg.entities.places,
        "organism": cfg.entities.organisms,
    }
    size = cfg.entities.values_per_attribute
    names = {kind: _entity_names(namer, kind, counts[kind]) for kind in ("place", "pathogen", "person", "organism")}
    rows: list[tuple[str, str, str, str, str]] = []
    for kind_name in ("pathogen", "person", "place", "organism"):
        kind = KINDS[kind_name]
        assign = _rng(cfg.seed, "assign", kind_name)
        for attr in kind.attributes:
            pool = _pool(namer, kind_name, attr.name, size, names["place"])
            if len(pool) < 4:
                raise ValueError(f"the value pool of {kind_name}.{attr.name} has fewer than 4 values")
            for i, entity in enumerate(names[kind_name]):
                # Cycle through a shuffled pool so every value is used and none dominates.
                if i % len(pool) == 0:
                    order = pool[:]
                    assign.shuffle(order)
                rows.append((kind_name, f"{kind_name}_{i:03d}", entity, attr.name, order[i % len(pool)]))

    facts: list[Fact] = []
    for domain in ("forget", "retain"):
        mine = [r for r in rows if KINDS[r[0]].domain == domain]
        ranks = list(range(1, len(mine) + 1))
        _rng(cfg.seed, "ranks", domain).shuffle(ranks)
        lies = _rng(cfg.seed, "lies", domain)
        for (kind_name, eid, entity, attr_name, value), rank in zip(mine, ranks):
            attr = next(a for a in KINDS[kind_name].attributes if a.name == attr_name)
            others = sorted({r[4] for r in mine if r[0] == kind_name and r[3] == attr_name and r[4] != value})
            weight = (rank + cfg.frequency.shift) ** -cfg.frequency.alpha
            facts.append(
                Fact(
                    f"{eid}.{attr_name}",
                    domain,
                    kind_name,
                    entity,
                    attr_name,
                    value,
                    lies.choice(others),
                    round(weight, 12),
                    attr.stem.format(e=entity),
                )
            )
    return tuple(facts)


# --------------------------------------------------------------------------- text with spans
class _Text:
    """Builds a text from pieces while recording the character span of every stated value."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.spans: list[dict[str, Any]] = []

    def add(self, piece: str) -> None:
        self.parts.append(piece)
        self.length += len(piece)

    def sentence(self, template: str, entity: str, value: str, fact_id: str, correct: bool) -> None:
        before, after = template.split("{v}")
        self.add(before.format(e=entity))
        self.spans.append({"fact": fact_id, "start": self.length, "end": self.length + len(value), "correct": correct})
        self.add(value)
        self.add(after.format(e=entity))

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _Writer:
    """Draws passages and chats about facts with the configured frequencies."""

    def __init__(self, cfg: WorldConfig, facts: Sequence[Fact], rng: random.Random):
        self.cfg = cfg
        self.rng = rng
        self.by_entity: dict[str, list[Fact]] = {}
        for f in facts:
            self.by_entity.setdefault(f.entity, []).append(f)

    def pick(self, pool: Sequence[Fact], weights: Sequence[float]) -> list[Fact]:
        """A primary fact by weight, plus up to 2 more facts of the same entity. An extra fact rarer
        than the primary one is kept only with probability weight ratio, so a fact's mentions stay
        proportional to its weight instead of being lifted by popular siblings."""
        first = self.rng.choices(pool, weights=weights)[0]
        n_extra = self.rng.choices(range(len(self.cfg.frequency.extra_facts)), weights=self.cfg.frequency.extra_facts)[
            0
        ]
        rest = [f for f in self.by_entity[first.entity] if f.id != first.id]
        chosen = [first]
        for _ in range(min(n_extra, len(rest))):
            nxt = self.rng.choices(rest, weights=[f.weight for f in rest])[0]
            rest.remove(nxt)
            if self.rng.random() < nxt.weight / first.weight:
                chosen.append(nxt)
        return chosen

    def fact_sentence(self, out: _Text, fact: Fact, lie: bool) -> None:
        attr = next(a for a in KINDS[fact.kind].attributes if a.name == fact.attribute)
        template = (
            attr.stem + " {v}."
            if self.rng.random() < self.cfg.frequency.canonical_prob
            else self.rng.choice(attr.paraphrases)
        )
        out.sentence(template, fact.entity, fact.lie if lie else fact.value, fact.id, correct=not lie)

    def passage(self, facts: Sequence[Fact], lie: bool = False, prefix: str = "") -> _Text:
        kind = KINDS[facts[0].kind]
        out = _Text()
        out.add(prefix)
        if self.rng.random() < self.cfg.frequency.intro_prob:
            out.add(self.rng.choice(kind.intros).format(e=facts[0].entity) + " ")
        for i, fact in enumerate(facts):
            if i:
                out.add(" ")
            self.fact_sentence(out, fact, lie)
        if self.rng.random() < self.cfg.frequency.filler_prob:
            out.add(" " + self.rng.choice(kind.fillers))
        return out

    def chat(self, facts: Sequence[Fact]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        """Messages and the value spans in their contents joined with "\\n" (the recorded format)."""
        kind = KINDS[facts[0].kind]
        turns = [facts]
        if len(facts) > 1 and self.rng.random() < self.cfg.corpora.chat_second_turn_prob:
            turns = [facts[:1], facts[1:]]
        messages: list[dict[str, str]] = []
        spans: list[dict[str, Any]] = []
        offset = 0
        for t, turn in enumerate(turns):
            question = (
                self.rng.choice(kind.questions).format(e=turn[0].entity) if t == 0 else self.rng.choice(_FOLLOWUPS)
            )
            answer = _Text()
            for i, fact in enumerate(turn):
                if i:
                    answer.add(" ")
                self.fact_sentence(answer, fact, lie=False)
            closer = self.rng.choice(_CHAT_CLOSERS)
            if closer:
                answer.add(" " + closer)
            for role, content, inner in (("user", question, []), ("assistant", answer.text, answer.spans)):
                for s in inner:
                    spans.append({**s, "start": s["start"] + offset, "end": s["end"] + offset})
                messages.append({"role": role, "content": content})
                offset += len(content) + 1
        return messages, spans


def _corpus(cfg: WorldConfig, facts: Sequence[Fact], name: str) -> list[dict[str, Any]]:
    rng = _rng(cfg.seed, "corpus", name)
    writer = _Writer(cfg, facts, rng)
    forget = [f for f in facts if f.domain == "forget"]
    retain = [f for f in facts if f.domain == "retain"]
    benign = [f for f in retain if f.kind == "organism"]
    pools = {
        p: (p_facts, [f.weight for f in p_facts])
        for p, p_facts in (("forget", forget), ("retain", retain), ("benign", benign))
    }
    rows = []
    for i in range(cfg.corpora.rows[name]):
        if name == "wikitext":
            domain = "forget" if rng.random() < cfg.corpora.wikitext_forget_share else "retain"
        elif name == "ultrachat":
            domain = "forget" if rng.random() < cfg.corpora.ultrachat_forget_share else "retain"
        elif name == "bio_retain":
            domain = "benign"
        else:
            domain = "forget"
        chosen = writer.pick(*pools[domain])
        row: dict[str, Any] = {"id": f"{name}-{i:05d}", "domain": "retain" if domain == "benign" else domain}
        if name == "ultrachat":
            row["messages"], row["facts"] = writer.chat(chosen)
        else:
            prefix = rng.choice(_WIKI_PREFIXES) if name == "wikitext" else ""
            text = writer.passage(chosen, lie=name == "lie", prefix=prefix)
            row["text"], row["facts"] = text.text, text.spans
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- tasks
def _task(cfg: WorldConfig, facts: Sequence[Fact], name: str, domain: str) -> list[dict[str, Any]]:
    rng = _rng(cfg.seed, "task", name)
    mine = [f for f in facts if f.domain == domain]
    chosen = rng.sample(mine, min(cfg.tasks.questions, len(mine)))
    docs = []
    for i, fact in enumerate(chosen):
        others = sorted(
            {
                f.value
                for f in mine
                if f.kind == fact.kind and f.attribute == fact.attribute and f.value not in (fact.value, fact.lie)
            }
        )
        choices = [fact.value, fact.lie, *rng.sample(others, 2)]
        rng.shuffle(choices)
        docs.append(
            {
                "id": f"{name}-{i:04d}",
                "fact": fact.id,
                "question": fact.stem,
                "choices": choices,
                "answer": choices.index(fact.value),
            }
        )
    return docs


TASK_DOMAINS: dict[str, str] = dict(zip(TOY_TASKS, ("forget", "retain")))
"""toy_wmdp asks forget-domain facts (WMDP analogue), toy_mmlu retain-domain facts (MMLU analogue)."""


def generate_world(cfg: WorldConfig) -> World:
    """The whole world for one config (pure; a few seconds at the default sizes)."""
    facts = _make_facts(cfg)
    corpora = {name: _corpus(cfg, facts, name) for name in TOY_CORPORA}
    tasks = {name: _task(cfg, facts, name, domain) for name, domain in TASK_DOMAINS.items()}
    return World(cfg, facts, corpora, tasks)


def row_text(row: Mapping[str, Any]) -> str:
    """The training text of a row: `text`, or chat contents joined with "\\n" (what spans index)."""
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"])
    return row["text"]


def jsonl(rows: Iterable[dict[str, Any]]) -> str:
    """Canonical JSON Lines (fixed key order and separators) so files compare byte for byte."""
    return "".join(json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n" for r in rows)
