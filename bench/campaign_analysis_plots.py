"""The campaign analysis on a synthetic campaign: the grand spectrum and the exclusion curve.

A campaign of one-hour runs (quax_faust/search/synthetic_campaign.py: QUAX-like cavity at
10.4 GHz, Q_L = 1e5, LO stepped by 50 kHz) with one axion injected at the coupling the analysis
expects at 6 sigma. Prints the rescan list and the look-elsewhere numbers, and draws
docs/img/campaign_analysis.png (matplotlib):

    .venv/bin/python bench/campaign_analysis_plots.py [--runs 40] [--seed 1] [--out docs/img/campaign_analysis.png]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from quax_faust.search import exclusion, rescan
from quax_faust.search.grand import grand_spectrum
from quax_faust.search.synthetic_campaign import Axion, CampaignPlan, synthetic_campaign

REPO = Path(__file__).resolve().parent.parent
INJECTED_SIGMA = 6.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "campaign_analysis.png")
    args = parser.parse_args()

    plan = replace(CampaignPlan(), n_runs=args.runs)
    reference = grand_spectrum(synthetic_campaign(plan, seed=args.seed))
    k = int(np.flatnonzero(reference.n_runs >= min(plan.n_runs, 12))[len(reference.frequency_hz) // 3])
    injected = Axion(float(reference.frequency_hz[k]) + 0.3 * reference.bin_width_hz,
                     INJECTED_SIGMA * float(reference.sigma[k]))
    grand = grand_spectrum(synthetic_campaign(plan, [injected], seed=args.seed))
    theta = rescan.threshold_for_goal()
    entries = rescan.rescan_list(grand, theta)
    curve = exclusion.exclusion_curve(grand)

    covered = grand.covered
    print(f"{len(grand.runs)} runs, {covered.sum()} candidate frequencies over "
          f"{(grand.frequency_hz[covered][-1] - grand.frequency_hz[covered][0]) / 1e6:.2f} MHz")
    print(f"threshold {theta:.3f} sigma: {rescan.expected_false_candidates(grand, theta):.2f} false candidates "
          f"expected over the band; injected axion at {injected.frequency_hz:.1f} Hz, g2 = {injected.g2:.1f}")
    for entry in entries:
        runs = ", ".join(f"{r.run} ({r.weight:.0%})" for r in entry.runs[:3])
        print(f"  {entry.frequency_hz:.1f} Hz  {entry.significance:.2f} sigma (global {entry.global_significance:.2f})"
              f"  g2 = {entry.g2:.1f} +- {entry.sigma:.1f}  runs {runs}  rescan cavity at "
              f"{entry.rescan_cavity_frequency_hz:.0f} Hz, LO {entry.rescan_lo_frequency_hz:.0f} Hz")
    print(f"best 90 % CL limit {np.nanmin(curve.limit_over_ksvz):.2f} x KSVZ "
          f"(radiometer equation {np.nanmin(curve.g_radiometer_gev / curve.ksvz_gev):.2f})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offset_mhz = (grand.frequency_hz - 10.4e9) / 1e6
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(offset_mhz, grand.significance, lw=0.5, color="tab:blue", label="grand spectrum")
    top.axhline(theta, color="tab:red", lw=1, label=f"threshold {theta:.3f} σ (5 σ seen 95 %)")
    top.plot([(e.frequency_hz - 10.4e9) / 1e6 for e in entries], [e.significance for e in entries], "v",
             color="tab:red", label="rescan list")
    top.axvline((injected.frequency_hz - 10.4e9) / 1e6, color="gray", lw=0.8, ls=":", label="injected axion")
    top.set_ylabel("significance (σ)")
    top.legend(loc="lower right", fontsize=8)
    bottom.semilogy(offset_mhz, curve.g_limit_gev, lw=0.6, color="tab:blue", label="90 % CL limit")
    bottom.semilogy(offset_mhz, curve.g_radiometer_gev, lw=1, color="black", ls="--", label="radiometer equation")
    bottom.semilogy(offset_mhz, curve.ksvz_gev, color="tab:orange", label="KSVZ")
    bottom.semilogy(offset_mhz, curve.dfsz_gev, color="tab:green", label="DFSZ")
    bottom.set_ylabel("|g_aγγ| (GeV⁻¹)")
    bottom.set_xlabel("frequency − 10.4 GHz (MHz)")
    bottom.legend(loc="upper right", fontsize=8)
    fig.suptitle(f"Synthetic campaign: {len(grand.runs)} one-hour runs, LO steps of 50 kHz, Q_L = 1e5")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
