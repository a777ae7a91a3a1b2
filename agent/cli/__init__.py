"""People: the dr-agent command, diagnostics, the demo, simulation and charts."""

from agent.cli.main import main

__all__ = ["main"]
