"""Where the human hears about a request: push, desktop and other channels, as plug-ins.

A channel gets a `Notice` (what is asked, the reason shortened and escaped, the match code and
the link) and never anything that approves by itself or any value.
"""
