"""Where the human hears about a request: push, desktop and other channels, as plug-ins.
A notice carries what is asked, the escaped reason, the match code and the link: never a value,
never anything that approves by itself."""
