"""Secret providers: where secrets live. One module per provider, registered by entry point."""
