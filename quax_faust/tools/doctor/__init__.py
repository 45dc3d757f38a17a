"""``quax doctor``: what is wrong with a running chain, and the fix (docs/troubleshooting.md).

In the order things are done: probes.py gathers facts (broker, workers' health views, ports, the DAQ
directory, disks), each probe under a deadline (report.start_probe); chain_checks.py and
machine_checks.py judge them, pure; report.py prints the lines and gives the exit code;
command.py runs it all and adds the subcommand.
"""
