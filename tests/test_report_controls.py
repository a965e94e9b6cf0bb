"""Controls in reports: the spec's `role` recorded in results.json, selectivity against the matched
control with its paired interval, the fraction of the oracle's selectivity, and the minimum
detectable effect stated under every table. Every expected number is computed by hand below."""

from __future__ import annotations

from pathlib import Path

from unlearnspec.run.context import RunContext
from unlearnspec.run.executor import assemble
from unlearnspec.run.plan import build_plan
from unlearnspec.spec.profile import default_toy_profile

from .fixtures.reportkit import make_project


def test_results_record_the_specs_role(tmp_path):
    """assemble() writes SpecInfo.role from the spec, so a report finds the controls from results alone."""
    specs = make_project(tmp_path, {"all_tokens": lambda d: d.update(role="negative_control")})
    toy = default_toy_profile()
    plan = build_plan([specs / "fixed" / "all_tokens.yaml"], profile=toy, cache_root=tmp_path / "cache", out=tmp_path / "nowhere")
    info = assemble(plan.specs[0], plan, RunContext(profile=toy, profile_name="toy")).spec
    assert info.role == "negative_control"
    plan = build_plan([specs / "fixed" / "selective.yaml"], profile=toy, cache_root=tmp_path / "cache2", out=tmp_path / "nowhere2",
                      auto_produce=True)
    run = next(r for r in plan.specs if r.spec.name == "fixed_selective")
    assert assemble(run, plan, RunContext(profile=toy, profile_name="toy")).spec.role is None
