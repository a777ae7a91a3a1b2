"""DR events: the payload models, signatures, contract rules and the event lifecycle."""
