"""Load-shedding strategies: the language facility managers write and the engine that runs it."""
