"""dr-agent daemon core: event intake, control loop, baseline, storage, reporting, CLI."""

__version__ = "0.1.0"
