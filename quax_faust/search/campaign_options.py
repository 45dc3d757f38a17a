"""The campaign analysis' command-line options, shared by ``quax campaign`` (tools/campaign_cmd.py)
and ``quax reprocess-campaign`` (spark_batch/cli.py): their definitions, and how they are read into
the analysis' knobs (CampaignConfig), its candidate threshold (sigma) and the goal it records."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from quax_faust.search import exclusion, rescan
from quax_faust.search.run_excess import CampaignConfig


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    """--target-significance, --detection-probability, --threshold, --confidence,
    --power-floor-sigma and --config NAME=VALUE, as ``quax campaign``."""
    p.add_argument("--target-significance", type=float, default=5.0, metavar="SIGMA",
                   help="threshold set so that an axion expected at this significance passes it ... (default 5)")
    p.add_argument("--detection-probability", type=float, default=0.95, metavar="P", help="... this often (default 0.95)")
    p.add_argument("--threshold", type=float, metavar="SIGMA", help="the candidate threshold itself, in sigma")
    p.add_argument("--confidence", type=float, default=exclusion.CONFIDENCE, metavar="CL",
                   help="confidence level of the exclusion limit (default 0.9)")
    p.add_argument("--power-floor-sigma", type=float, default=0.0, metavar="SIGMA",
                   help="power constraint: the measured g2 is floored at this many sigma (default 0)")
    p.add_argument("--config", action="append", default=[], metavar="NAME=VALUE",
                   help="a knob of the analysis (repeatable): " + ", ".join(
                       f"{f.name} ({f.default})" for f in dataclasses.fields(CampaignConfig)))


def parse_config(pairs: Sequence[str]) -> CampaignConfig:
    """CampaignConfig from ``NAME=VALUE`` strings (--config), each VALUE of its knob's type."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(CampaignConfig)}
    changes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(f"--config {pair!r}: expected NAME=VALUE, NAME one of {', '.join(fields)}")
        try:
            changes[name] = fields[name](value)
        except ValueError:
            raise ValueError(f"--config {pair!r}: {value!r} is not a {fields[name].__name__}") from None
        if changes[name] < 0:
            raise ValueError(f"--config {pair!r}: must not be negative")
    return dataclasses.replace(CampaignConfig(), **changes)


def analysis_goal(args) -> tuple[CampaignConfig, float, dict[str, float]]:
    """(knobs, threshold in sigma, the goal as the campaign file records it) from the options;
    ValueError for a probability outside (0, 1) or a bad --config."""
    config = parse_config(args.config)
    for name in ("detection_probability", "confidence"):
        if not 0 < getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: a probability between 0 and 1")
    if args.threshold is not None:
        threshold, goal = args.threshold, {}
    else:
        threshold = rescan.threshold_for_goal(args.target_significance, args.detection_probability)
        goal = {"target_significance": args.target_significance, "detection_probability": args.detection_probability}
    return config, threshold, goal | {"confidence": args.confidence, "power_floor_sigma": args.power_floor_sigma}
