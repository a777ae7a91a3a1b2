"""Built-in device kinds. Importing this package registers them all."""

from drivers.kinds import ev_charger, hvac, lighting, meter, relay, storage

__all__ = ["ev_charger", "hvac", "lighting", "meter", "relay", "storage"]
