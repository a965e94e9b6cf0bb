"""The embedded toy world, a plug-in at the edge: importing this package registers it with `unlearnspec.worlds`
(its names, assets, ground truth and score-quality hook; see `toy.plugin`). Import-light."""

from unlearnspec.toy.names import TOY_CORPORA, TOY_MODELS, TOY_TASKS  # noqa: F401 - the public names
from unlearnspec.toy.plugin import register as _register

_register()
