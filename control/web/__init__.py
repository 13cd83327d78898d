"""The web dashboard (aiohttp): pages, live updates, JSON API, log-in."""
