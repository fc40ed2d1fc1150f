"""The side port: an aiohttp app for internal apps (uploads, runs, config views) and for probes."""
