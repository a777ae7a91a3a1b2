"""What the process stands on: SQLite storage, the injected clock, logging, failpoints."""
