"""DR events: the payload models, signatures, contract rules, the ledger and the event lifecycle."""
