"""OpenADR 2.0b as a second event source: a VEN that feeds the same event lifecycle as MQTT.

`agent/config/openadr.py` holds the `openadr:` section (pure pydantic, no openleadr import);
`mapping.py` turns an oadrEvent into our `DrEvent` (pure); `ven.py` is the
VEN itself (registration, polling, opt-in/out, TELEMETRY_USAGE reports) and
needs the optional `openadr` extra (openleadr) only when it runs.
"""
