"""``quax campaign-live``: run the live campaign service (quax_faust/campaign/, docs/analysis.md).

Runs until SIGTERM or Ctrl-C, then saves its state and exits 0. Started by the Procfile beside the
workers; the dashboard's campaign page reads its document.
"""

from __future__ import annotations

import asyncio
import signal

from quax_faust.settings import Settings
from quax_faust.tools.commands import EXIT_OK


def cmd_campaign_live(args, settings: Settings) -> int:
    from quax_faust.campaign import service

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.serve(settings, from_beginning=args.from_beginning, stop=stop)

    asyncio.run(main())
    return EXIT_OK


def register(sub, common) -> None:
    """Add ``quax campaign-live`` to the CLI's subparsers."""
    p = sub.add_parser("campaign-live", parents=[common],
                       help="the live campaign: grand spectrum, rescan list and exclusion limit as files arrive")
    p.add_argument("--from-beginning", action="store_true",
                   help="ignore the saved state and read the spectra topic from its beginning")
    p.set_defaults(func=cmd_campaign_live)
