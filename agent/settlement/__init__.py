"""Money: baselines, metering history, the settlement formula and the books."""
