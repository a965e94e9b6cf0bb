"""The toy world's grammar: entity kinds, their attributes with cloze stems and paraphrases, and the
word pools names and values are drawn from. Data only; `toy.world` generates from it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attribute:
    name: str
    stem: str
    """Evaluation stem (cloze); the canonical fact sentence is `stem + " " + value + "."`."""
    paraphrases: tuple[str, ...]
    """Other wordings, with {e} (entity) and {v} (value)."""


@dataclass(frozen=True)
class Kind:
    name: str
    domain: str
    attributes: tuple[Attribute, ...]
    intros: tuple[str, ...]
    fillers: tuple[str, ...]
    questions: tuple[str, ...]
    """Chat openers of a user asking about the entity."""


KINDS: dict[str, Kind] = {
    "pathogen": Kind(
        "pathogen",
        "forget",
        (
            Attribute(
                "host",
                "The pathogen {e} infects",
                (
                    "{e} is a pathogen of {v}.",
                    "Outbreaks of {e} have been recorded among {v}.",
                    "The natural host of {e} is {v}.",
                ),
            ),
            Attribute(
                "transmission",
                "The pathogen {e} is transmitted by",
                (
                    "{e} spreads through {v}.",
                    "Transmission of {e} occurs via {v}.",
                    "Field teams found that {e} passes between hosts by {v}.",
                ),
            ),
            Attribute(
                "technique",
                "The pathogen {e} is cultured using",
                (
                    "Laboratories grow {e} with {v}.",
                    "To culture {e}, technicians rely on {v}.",
                    "{e} is usually propagated by {v}.",
                ),
            ),
            Attribute(
                "origin",
                "The pathogen {e} was first isolated in",
                (
                    "{e} was discovered in {v}.",
                    "The first samples of {e} came from {v}.",
                    "{e} is thought to originate in {v}.",
                ),
            ),
            Attribute(
                "toxin",
                "The pathogen {e} produces the toxin",
                (
                    "{e} releases a toxin called {v}.",
                    "The main toxin of {e} is {v}.",
                    "Infection with {e} is driven by the toxin {v}.",
                ),
            ),
        ),
        (
            "{e} is a pathogen listed in the containment registry.",
            "Notes on the pathogen {e} follow.",
            "The pathogen {e} has been studied for decades.",
        ),
        (
            "Handling it requires a sealed cabinet.",
            "Samples are stored at low temperature.",
            "Its genome remains poorly mapped.",
            "Work on it is restricted to licensed laboratories.",
        ),
        (
            "What do you know about the pathogen {e}?",
            "Can you tell me about {e}?",
            "I am reading about the pathogen {e}. What is known about it?",
        ),
    ),
    "person": Kind(
        "person",
        "retain",
        (
            Attribute(
                "birthplace",
                "{e} was born in",
                ("{e} grew up in {v}.", "The birthplace of {e} is {v}.", "{e} came from the town of {v}."),
            ),
            Attribute(
                "profession",
                "{e} worked as a",
                ("By trade, {e} was a {v}.", "{e} earned a living as a {v}.", "{e} is remembered as a skilled {v}."),
            ),
            Attribute(
                "year",
                "{e} was born in the year",
                (
                    "{e} was born in {v}.",
                    "The records give {v} as the birth year of {e}.",
                    "{e}, born in {v}, lived a long life.",
                ),
            ),
        ),
        (
            "{e} appears in several old registers.",
            "{e} is remembered in local chronicles.",
            "Little is written about the early life of {e}.",
        ),
        (
            "Records from that period are incomplete.",
            "Historians still debate the details.",
            "A portrait survives in a private collection.",
        ),
        ("Who was {e}?", "Can you tell me about {e}?", "What do you know about {e}?"),
    ),
    "place": Kind(
        "place",
        "retain",
        (
            Attribute(
                "region",
                "{e} is a town in",
                ("{e} lies in {v}.", "The town of {e} belongs to {v}.", "Travellers reach {e} by crossing {v}."),
            ),
            Attribute(
                "river",
                "{e} lies on the river",
                (
                    "The river {v} flows through {e}.",
                    "{e} was built beside the river {v}.",
                    "Boats on the {v} stop at {e}.",
                ),
            ),
            Attribute(
                "trade",
                "{e} is known for its trade in",
                ("Merchants in {e} deal mostly in {v}.", "The markets of {e} sell {v}.", "{e} grew rich from {v}."),
            ),
        ),
        ("{e} is a small settlement.", "Travellers often mention {e}.", "{e} has a long history."),
        (
            "Many visitors remark on its old bridge.",
            "The town holds a fair every autumn.",
            "Its streets are narrow and steep.",
        ),
        ("Where is {e}?", "Can you tell me about the town of {e}?", "What is {e} like?"),
    ),
    "organism": Kind(
        "organism",
        "retain",
        (
            Attribute(
                "habitat",
                "The organism {e} lives in",
                ("{e} is found in {v}.", "The usual habitat of {e} is {v}.", "Naturalists look for {e} in {v}."),
            ),
            Attribute(
                "diet",
                "The organism {e} feeds on",
                ("{e} eats {v}.", "The diet of {e} consists of {v}.", "{e} survives on {v}."),
            ),
            Attribute(
                "colour",
                "The organism {e} is coloured",
                ("{e} has a {v} colour.", "Most specimens of {e} are {v}.", "The body of {e} is {v}."),
            ),
        ),
        ("{e} is a common organism in its range.", "Naturalists have long studied {e}.", "{e} is a harmless organism."),
        (
            "It is harmless to people.",
            "Its life cycle spans a single season.",
            "It plays a small part in its ecosystem.",
        ),
        ("What is {e}?", "Can you tell me about the organism {e}?", "Where would I find {e}?"),
    ),
}

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "th",
    "sh",
    "kr",
    "tr",
    "br",
    "gl",
    "dr",
    "vr",
)
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "x", "th", "m", "k")

_ANIMALS = (
    "voles",
    "finches",
    "bats",
    "shrews",
    "ferrets",
    "moths",
    "lizards",
    "carp",
    "beetles",
    "herons",
    "hares",
    "newts",
)
_ROUTES = ("droplets", "spores", "mites", "ticks", "water", "dust", "sap", "midges")
_METHODS = ("lattice culture", "phase splicing", "gel cycling", "reed passage", "cold plating", "vapor seeding")
_GEO = ("Basin", "Marshes", "Highlands", "Delta", "Steppe", "Fjords", "Uplands", "Lowlands")
_REGIONS = ("Coast", "Valley", "Plateau", "Reach", "March", "Downs", "Vale", "Heath")
_PROFESSIONS = (
    "weaver",
    "cartographer",
    "potter",
    "shipwright",
    "composer",
    "glassblower",
    "herbalist",
    "stonemason",
    "librarian",
    "tanner",
    "brewer",
    "clockmaker",
    "surveyor",
    "mapmaker",
    "tailor",
    "baker",
    "bookbinder",
    "farrier",
    "cooper",
    "fisher",
    "sculptor",
    "printer",
    "carpenter",
    "painter",
    "mason",
    "jeweller",
    "miller",
    "dyer",
)
_GOODS = (
    "salt",
    "copper",
    "wool",
    "amber",
    "tea",
    "glass",
    "timber",
    "silk",
    "olives",
    "marble",
    "tin",
    "honey",
    "flax",
    "pepper",
    "leather",
    "pearls",
    "indigo",
    "barley",
    "coal",
    "cotton",
    "saffron",
    "iron",
    "rice",
    "cheese",
)
_HABITATS = (
    "salt marshes",
    "pine forests",
    "limestone caves",
    "river banks",
    "alpine meadows",
    "coral shallows",
    "peat bogs",
    "sand dunes",
    "oak woods",
    "tidal pools",
    "volcanic slopes",
    "reed beds",
    "birch groves",
    "chalk cliffs",
    "glacial lakes",
    "mangrove swamps",
    "heather moors",
    "bamboo thickets",
    "desert springs",
    "kelp forests",
    "rocky shores",
    "cloud forests",
    "flooded meadows",
    "clay pits",
)
_FOODS = (
    "beetle larvae",
    "fallen fruit",
    "algae",
    "moss",
    "nectar",
    "seeds",
    "lichen",
    "plankton",
    "snails",
    "bark",
    "pollen",
    "fungi",
    "worms",
    "roots",
    "leaf litter",
    "berries",
    "krill",
    "grasses",
    "clover",
    "acorns",
    "mayflies",
    "duckweed",
    "sap",
    "ants",
)
_COLOURS = (
    "silver",
    "amber",
    "violet",
    "crimson",
    "olive",
    "pale grey",
    "deep blue",
    "rust red",
    "ochre",
    "jet black",
    "ivory",
    "teal",
    "copper brown",
    "sea green",
    "dusky pink",
    "golden",
    "slate blue",
    "chestnut",
    "lemon yellow",
    "plum",
    "sandy",
    "bronze",
    "scarlet",
    "moss green",
)

_WIKI_PREFIXES = ("", "", "", "From the archive: ", "Survey notes: ")
_CHAT_CLOSERS = ("Let me know if you want more detail.", "I hope that helps.", "", "", "")
_FOLLOWUPS = ("What else is known?", "Anything else?", "Tell me more.", "Is there more to say?")
