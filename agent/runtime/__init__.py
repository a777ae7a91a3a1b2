"""The process: the daemon (composition root), supervision, MQTT link, metrics, state file, reload."""
