"""`python -m agent_vault` runs the same command line as `agent-vault`."""

from agent_vault.cli.main import main

raise SystemExit(main())
