"""Web layer: the JSON API and the server-rendered pages (blueprints)."""
