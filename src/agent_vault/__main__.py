"""`python -m agent_vault` runs the same command line as `agent-vault`."""

from agent_vault.cli import main

raise SystemExit(main())
