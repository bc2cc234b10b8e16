"""The files people write: the project's config, the user's settings, and what one may point at."""
