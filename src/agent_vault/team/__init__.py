"""A team broker's listener for front doors on other machines (docs/team.md): the broker's API over HTTPS,
each call with an agent's token (`agent-vault agents add`)."""
