"""Money: baselines, metering history, the settlement formula and record, the books and the participation ledger."""
