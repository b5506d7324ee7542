"""`hepafed phantom`: write a CT, CT timeline or MRI phantom in the site data contract (and
the CT one as DICOM series too). Imports the generators only when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.cli import EXIT_OK, EXIT_USAGE


def cmd_phantom(args: argparse.Namespace) -> int:
    from simulations.mri_scenario import is_mri_scenario
    from simulations.timeline import is_timeline_scenario

    if is_timeline_scenario(args.scenario):  # docs/phantom.md, "Time: the liver-timeline ..."
        from simulations.timeline import generate_timeline_phantom, load_timeline_scenario

        timeline = load_timeline_scenario(args.scenario)
        if args.dicom:
            print("error: --dicom writes the CT phantom only", file=sys.stderr)
            return EXIT_USAGE
        out = generate_timeline_phantom(timeline, Path(args.out), seed=args.seed)
        print(
            f"timeline phantom {timeline.name!r} ({len(timeline.sites)} sites, "
            f"{timeline.months} months from {timeline.start}) in {out}"
        )
        return EXIT_OK

    if is_mri_scenario(args.scenario):  # the MRI phantom (docs/phantom.md, "The MRI phantom")
        from simulations.mri_phantom import generate_mri_phantom
        from simulations.mri_scenario import load_mri_scenario

        mri = load_mri_scenario(args.scenario)
        if args.dicom:
            print("error: --dicom writes the CT phantom only", file=sys.stderr)
            return EXIT_USAGE
        out = generate_mri_phantom(mri, Path(args.out), seed=args.seed)
        print(f"MRI phantom {mri.name!r} ({len(mri.sites)} sites) in {out}")
        return EXIT_OK
    from simulations.phantom import generate_phantom
    from simulations.scenario import load_scenario

    spec = load_scenario(args.scenario)
    out = generate_phantom(spec, Path(args.out), seed=args.seed)
    print(f"phantom {spec.name!r} ({len(spec.sites)} sites) in {out}")
    if args.dicom:
        from simulations.phantom_dicom import write_dicom_phantom

        sites = write_dicom_phantom(out, Path(args.dicom))
        print(f"  as DICOM series ({len(sites)} sites) in {args.dicom}")
    return EXIT_OK


def add_phantom_command(sub: argparse._SubParsersAction[Any]) -> None:
    """Register `hepafed phantom`."""
    p = sub.add_parser("phantom", help="write a multi-center phantom in the site data contract")
    p.add_argument("--scenario", default="liver-5", help="bundled name or TOML path")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per site)")
    p.add_argument("--seed", type=int, default=None, help="default: the scenario's seed")
    p.add_argument(
        "--dicom",
        metavar="DIR",
        help="also write every site with its images as DICOM series (one file per slice, "
        "as a PACS holds them) under DIR",
    )
    p.set_defaults(func=cmd_phantom)
