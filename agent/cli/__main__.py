"""`python -m agent.cli` is `dr-agent`."""

from agent.cli.main import main

raise SystemExit(main())
