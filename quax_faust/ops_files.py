"""Where the ops/ files are: the Kafka broker script and its config templates, the Prometheus
config and rules, the Grafana dashboard, the Spark jars' pom.

An installed wheel carries them inside the package as ``quax_faust/ops`` (pyproject.toml maps the
top-level ops/ there); run from a checkout they are the checkout's ops/.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def ops_dir() -> Path:
    """quax_faust/ops of the installed package, else ops/ beside the package (a checkout)."""
    package = Path(str(resources.files(__package__)))
    shipped = package / "ops"
    return shipped if shipped.is_dir() else package.parent / "ops"
